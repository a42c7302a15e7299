//! Production gating: a live key works only for an organization with HIPAA mode on and signed
//! BAA evidence recorded. Test keys always pass; they reach the sandbox backend when one is
//! configured, so sandbox traffic and production data never meet.

use crate::gate::authn::Authenticated;
use crate::keys::Env;
use crate::problem::{Problem, ProblemCode};

/// Refuses a live key whose organization is not cleared for production.
pub fn check(caller: &Authenticated) -> Result<(), Problem> {
    if caller.key.env == Env::Test {
        return Ok(());
    }
    caller
        .org
        .production_ready()
        .map_err(|reason| Problem::new(ProblemCode::EnvGated).with_detail(reason.detail()))
}
