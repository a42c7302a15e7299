//! `/v1/reload`: re-read the policy file and put it into service, or say why not.

use http::{Response, StatusCode};

use super::{json, Context};
use crate::admin::problem::{AdminCode, AdminProblem};
use crate::admin::protocol::ReloadView;
use crate::body::ProxyBody;
use crate::reload::ReloadTrigger;

/// `POST /v1/reload`
pub(super) async fn reload(ctx: &Context) -> Result<Response<ProxyBody>, AdminProblem> {
    let Some(reloader) = &ctx.reloader else {
        return Err(AdminProblem::new(
            AdminCode::NotFound,
            "this instance was not started from a policy file (`portcullis serve`), so it has nothing to reload",
        ));
    };
    tracing::info!(uid = ctx.peer.uid, "reload requested over the admin socket");
    let outcome = reloader
        .reload(ReloadTrigger::AdminSocket, &ctx.peer.actor())
        .await;
    let label = outcome.result_label().to_owned();
    match outcome.result {
        Ok(reloaded) => json(
            StatusCode::OK,
            &ReloadView {
                result: label,
                generation: reloaded.generation,
                routes: reloaded.routes,
                policy_sha256: reloaded.policy_sha256,
                certificate_sha256: reloaded.certificate_sha256,
            },
        ),
        Err(error) => Err(
            AdminProblem::new(AdminCode::ReloadRefused, error.to_string())
                .with_reasons(error.reasons()),
        ),
    }
}
