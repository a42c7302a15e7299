//! `/v1/webhooks/dlq` and `/v1/webhooks/redeliver`: the webhook dead-letter queue.

use http::{Response, StatusCode};

use super::{blocking, json, Context};
use crate::admin::problem::{AdminCode, AdminProblem};
use crate::admin::protocol::{
    DeliveryList, RedeliverRequest, RedeliverResponse, DEFAULT_DLQ_LIMIT, MAX_DLQ_LIMIT,
};
use crate::admin::router;
use crate::body::ProxyBody;
use crate::orgs::is_org_id;
use crate::webhooks::admin::{self as dlq, RedeliverError, Target};

/// `GET /v1/webhooks/dlq[?org=ORG][&limit=N]`
pub(super) async fn list(
    ctx: Context,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, AdminProblem> {
    let params = router::query(query, &["org", "limit"])?;
    let limit = match params.get("limit") {
        None => DEFAULT_DLQ_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_DLQ_LIMIT).contains(n))
            .ok_or_else(|| {
                AdminProblem::new(
                    AdminCode::Malformed,
                    format!("limit must be a whole number from 1 to {MAX_DLQ_LIMIT}"),
                )
            })?,
    };
    let org = params.get("org").cloned();
    if let Some(org) = &org {
        org_id(org)?;
    }
    let records = blocking(move || {
        dlq::dead(&ctx.state, org.as_deref(), limit).map_err(|error| {
            tracing::error!(%error, "cannot read the webhook outbox");
            AdminProblem::internal()
        })
    })
    .await?;
    let deliveries = records.iter().map(dlq::view).collect();
    json(StatusCode::OK, &DeliveryList { deliveries })
}

/// `POST /v1/webhooks/redeliver`
pub(super) async fn redeliver(
    ctx: Context,
    request: RedeliverRequest,
) -> Result<Response<ProxyBody>, AdminProblem> {
    if let Some(org) = &request.org {
        org_id(org)?;
    }
    let target = match (&request.id, request.all_dead) {
        (Some(id), false) => {
            if request.org.is_some() {
                return Err(AdminProblem::new(
                    AdminCode::Malformed,
                    "`org` goes with `all_dead`, not with `id`",
                ));
            }
            Target::One(id.parse().map_err(|_| {
                AdminProblem::new(
                    AdminCode::Malformed,
                    "a delivery id is `dlv_` and 20 lowercase hex characters",
                )
            })?)
        }
        (None, true) => Target::AllDead(request.org.clone()),
        _ => {
            return Err(AdminProblem::new(
                AdminCode::Malformed,
                "name exactly one of `id` and `all_dead`",
            ))
        }
    };
    let moved = blocking(move || {
        let actor = ctx.peer.actor();
        dlq::redeliver(&ctx.state, &target, &actor).map_err(|error| match error {
            RedeliverError::NotFound => {
                AdminProblem::new(AdminCode::NotFound, "no webhook delivery has this id")
            }
            RedeliverError::NotDead(_) => AdminProblem::new(AdminCode::Conflict, error.to_string()),
            RedeliverError::Store(error) => {
                tracing::error!(%error, "cannot redeliver webhook deliveries");
                AdminProblem::internal()
            }
            RedeliverError::Log(error) => AdminProblem::from(error),
        })
    })
    .await?;
    tracing::info!(count = moved.len(), "webhook deliveries redelivered");
    let redelivered = moved.iter().map(dlq::view).collect();
    json(StatusCode::OK, &RedeliverResponse { redelivered })
}

fn org_id(text: &str) -> Result<(), AdminProblem> {
    if is_org_id(text) {
        Ok(())
    } else {
        Err(AdminProblem::new(
            AdminCode::Malformed,
            "an organization id is 1-63 characters of a-z, 0-9 and `-`, starting with a letter or digit",
        ))
    }
}
