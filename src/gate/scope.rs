//! The scope check: a route names the scope it needs, and a key without it is refused.

use crate::config::{RouteConfig, ScopeRequirement};
use crate::keys::KeyRecord;
use crate::problem::{Problem, ProblemCode};

/// Refuses `key` for `route` unless it holds the route's scope (or the route allows any key).
pub fn check(route: &RouteConfig, key: &KeyRecord) -> Result<(), Problem> {
    match &route.scope {
        ScopeRequirement::AnyKey => Ok(()),
        ScopeRequirement::Scope(scope) if key.scopes.contains(scope) => Ok(()),
        ScopeRequirement::Scope(scope) => Err(Problem::new(ProblemCode::PermDenied).with_detail(
            format!("this route requires the scope `{scope}`, which the API key does not have"),
        )),
    }
}
