//! `/v1/orgs`: create, list, show and change organizations, and record BAA evidence.
//!
//! These are the switches that let an organization's live keys reach production, so every
//! change is recorded with the peer's uid, and BAA evidence carries it as `recorded_by`.

use http::{Response, StatusCode};

use super::{blocking, json, Context};
use crate::admin::problem::{AdminCode, AdminProblem};
use crate::admin::protocol::{
    CreateOrgRequest, OrgList, OrgView, RecordBaaRequest, UpdateOrgRequest,
};
use crate::admin_log::AdminActionKind;
use crate::body::ProxyBody;
use crate::orgs::OrgError;
use crate::state::unix_now;

type Answer = Result<Response<ProxyBody>, AdminProblem>;

/// `GET /v1/orgs`
pub(super) fn list(ctx: &Context) -> Answer {
    let orgs = ctx
        .state
        .orgs
        .list()
        .iter()
        .map(|org| OrgView::new(org))
        .collect();
    json(StatusCode::OK, &OrgList { orgs })
}

/// `GET /v1/orgs/{id}`
pub(super) fn show(ctx: &Context, id: &str) -> Answer {
    let org = ctx
        .state
        .orgs
        .get(id)
        .ok_or_else(|| OrgError::NotFound(id.to_owned()))?;
    json(StatusCode::OK, &OrgView::new(&org))
}

/// `POST /v1/orgs`
pub(super) async fn create(ctx: Context, request: CreateOrgRequest) -> Answer {
    let now = unix_now();
    blocking(move || {
        let org = ctx.state.orgs.create(&request.id, &request.name, now)?;
        record(&ctx, AdminActionKind::OrgCreated, &org.id, now)?;
        json(StatusCode::CREATED, &OrgView::new(&org))
    })
    .await
}

/// `PATCH /v1/orgs/{id}`: the rename and the HIPAA switch are separate admin actions.
pub(super) async fn update(ctx: Context, id: String, request: UpdateOrgRequest) -> Answer {
    if request.name.is_none() && request.hipaa_mode.is_none() {
        return Err(AdminProblem::new(
            AdminCode::Invalid,
            "nothing to change: give name or hipaa_mode",
        ));
    }
    let now = unix_now();
    blocking(move || {
        // A bad name is refused before anything changes, so the request applies whole or not
        // at all (short of a storage failure).
        let mut org = ctx
            .state
            .orgs
            .get(&id)
            .ok_or_else(|| OrgError::NotFound(id.clone()))?;
        if let Some(name) = &request.name {
            org = ctx.state.orgs.rename(&id, name)?;
            record(&ctx, AdminActionKind::OrgUpdated, &id, now)?;
        }
        if let Some(on) = request.hipaa_mode {
            org = ctx.state.orgs.set_hipaa_mode(&id, on)?;
            record(&ctx, AdminActionKind::HipaaModeSet, &id, now)?;
        }
        json(StatusCode::OK, &OrgView::new(&org))
    })
    .await
}

/// `POST /v1/orgs/{id}/baa`
pub(super) async fn record_baa(ctx: Context, id: String, request: RecordBaaRequest) -> Answer {
    let now = unix_now();
    blocking(move || {
        let actor = ctx.peer.actor();
        let org = ctx.state.orgs.record_baa(
            &id,
            request.status,
            request.evidence.as_deref(),
            &actor,
            now,
        )?;
        record(&ctx, AdminActionKind::BaaRecorded, &id, now)?;
        json(StatusCode::OK, &OrgView::new(&org))
    })
    .await
}

fn record(ctx: &Context, action: AdminActionKind, org: &str, now: u64) -> Result<(), AdminProblem> {
    let actor = ctx.peer.actor();
    let entry = ctx
        .state
        .admin_log
        .append(action, &actor, org, Some(org), now)?;
    tracing::info!(
        seq = entry.seq,
        action = ?action,
        actor = %actor,
        org = %org,
        "admin action"
    );
    Ok(())
}
