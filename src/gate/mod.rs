//! The gates a request passes, in order, before it may reach the backend.
//!
//! Each gate reads what earlier gates established and either lets the request through or
//! returns a [`crate::problem::Problem`]. Nothing walks back up the chain.

pub mod authn;
pub mod client_ip;
pub mod gating;
pub mod idempotency;
pub mod limits;
pub mod quota;
pub mod ratelimit;
pub mod route;
pub mod scope;
pub mod throttle;
