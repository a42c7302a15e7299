//! `/v1/admin-actions`: who changed what, newest first.

use http::{Response, StatusCode};

use super::{blocking, json, Context};
use crate::admin::problem::{AdminCode, AdminProblem};
use crate::admin::protocol::{ActionList, ActionView, DEFAULT_ACTIONS_LIMIT, MAX_ACTIONS_LIMIT};
use crate::admin::router;
use crate::body::ProxyBody;

/// `GET /v1/admin-actions[?limit=N]`
pub(super) async fn list(
    ctx: Context,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, AdminProblem> {
    let params = router::query(query, &["limit"])?;
    let limit = params
        .get("limit")
        .map_or(Ok(DEFAULT_ACTIONS_LIMIT), |text| limit(text))?;
    // Reading walks the sled tree: keep it off the async workers.
    let entries = blocking(move || {
        ctx.state.admin_log.list(limit).map_err(|error| {
            tracing::error!(%error, "cannot read the admin log");
            AdminProblem::internal()
        })
    })
    .await?;
    let actions = entries.iter().map(ActionView::new).collect();
    json(StatusCode::OK, &ActionList { actions })
}

fn limit(text: &str) -> Result<usize, AdminProblem> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_ACTIONS_LIMIT).contains(n))
        .ok_or_else(|| {
            AdminProblem::new(
                AdminCode::Malformed,
                format!("limit must be a whole number from 1 to {MAX_ACTIONS_LIMIT}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_bounded() {
        assert_eq!(limit("1").unwrap(), 1);
        assert_eq!(limit("1000").unwrap(), 1000);
        for bad in ["0", "1001", "-1", "ten", "", "1e3"] {
            assert_eq!(
                limit(bad).unwrap_err().code(),
                AdminCode::Malformed,
                "{bad:?}"
            );
        }
    }
}
