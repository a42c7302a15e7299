//! The running policy: one immutable value, swapped whole.
//!
//! A request takes the current [`Policy`] once, when it arrives, and keeps that `Arc` until it
//! is answered; a reload builds a complete new value beside it and swaps the handle, so no
//! request ever sees half of one policy and half of another.

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Method;

use crate::config::{Config, RouteConfig, ScopeRequirement};
use crate::forward::{Forwarder, ForwarderError};
use crate::gate::route::{InvalidPath, RouteTable};

/// A validated configuration compiled for serving.
#[derive(Debug)]
pub struct Policy {
    /// The configuration it was built from.
    pub config: Config,
    routes: RouteTable,
    scopes: BTreeSet<String>,
    /// The backend client pool.
    pub forwarder: Arc<Forwarder>,
}

/// Why a validated configuration could not be put into service.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Routes that validation accepted failed to compile (should not happen).
    #[error("routes {first} and {second} cannot be told apart")]
    RouteConflict {
        /// Index of the earlier route.
        first: usize,
        /// Index of the later route.
        second: usize,
    },
    /// The upstream client could not be built.
    #[error(transparent)]
    Forwarder(#[from] ForwarderError),
}

impl Policy {
    /// Compiles the route table and builds the backend client.
    pub fn new(config: Config) -> Result<Self, PolicyError> {
        let shapes: Vec<_> = config
            .routes
            .iter()
            .map(|route| (route.method.clone(), route.path.clone()))
            .collect();
        let routes = RouteTable::build(&shapes).map_err(|conflicts| {
            let (first, second) = conflicts.first().map_or((0, 0), |c| (c.first, c.second));
            PolicyError::RouteConflict { first, second }
        })?;
        let forwarder = Arc::new(Forwarder::new(&config.upstream)?);
        let scopes = config
            .routes
            .iter()
            .filter_map(|route| match &route.scope {
                ScopeRequirement::Scope(scope) => Some(scope.clone()),
                ScopeRequirement::AnyKey => None,
            })
            .collect();
        Ok(Self {
            config,
            routes,
            scopes,
            forwarder,
        })
    }

    /// Every scope some route requires, for `whoami`'s permission map.
    pub fn scopes(&self) -> &BTreeSet<String> {
        &self.scopes
    }

    /// The route a request is for, if any; refuses paths the backend could read differently.
    pub fn route(&self, method: &Method, path: &str) -> Result<Option<&RouteConfig>, InvalidPath> {
        Ok(self
            .routes
            .find(method, path)?
            .and_then(|index| self.config.routes.get(index)))
    }
}

/// The atomically swappable handle every connection holds.
#[derive(Debug, Clone)]
pub struct PolicyHandle(Arc<ArcSwap<Policy>>);

impl PolicyHandle {
    /// Starts serving `policy`.
    pub fn new(policy: Policy) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(policy)))
    }

    /// The policy a new request runs under.
    pub fn current(&self) -> Arc<Policy> {
        self.0.load_full()
    }

    /// Puts `next` into service for requests that arrive from now on.
    pub fn replace(&self, next: Policy) {
        self.0.store(Arc::new(next));
    }
}
