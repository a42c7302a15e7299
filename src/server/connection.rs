//! One client connection from the first byte to the last answer.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::proxy_protocol;
use super::sniff::{self, FirstByte};
use super::tls::ALPN_H2;
use crate::config::ServerConfig;
use crate::metrics::TlsFailure;
use crate::problem::ProblemCode;
use crate::proxy::{self, ConnInfo};
use crate::request_id::RequestId;
use crate::state::State;

/// hyper's own parser ceilings are set this many times above the policy's limits, so the
/// policy's limits answer with a problem document and hyper's remain a hard backstop.
const PARSER_HEADROOM: usize = 2;

/// Everything a connection task needs from the listener.
pub(super) struct Connection {
    pub acceptor: TlsAcceptor,
    pub state: Arc<State>,
    pub watcher: Watcher,
    pub stopping: watch::Receiver<bool>,
}

impl Connection {
    pub async fn serve(mut self, mut tcp: TcpStream, peer: SocketAddr) {
        let policy = self.state.policies.current();
        let limits = &policy.config.server;
        let patience = limits.tls_handshake_timeout;
        let expects_proxy_header = limits.proxy_protocol
            && limits
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&peer.ip().to_canonical()));

        let mut client = peer;
        let metrics = &self.state.metrics;
        let establish = async {
            if expects_proxy_header {
                match tokio::time::timeout(patience, proxy_protocol::read_header(&mut tcp)).await {
                    Ok(Ok(Some(source))) => client = source,
                    Ok(Ok(None)) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "PROXY header refused");
                        metrics.tls_failure(TlsFailure::ProxyHeader);
                        return None;
                    }
                    Err(_) => {
                        tracing::debug!("PROXY header timed out");
                        metrics.tls_failure(TlsFailure::Timeout);
                        return None;
                    }
                }
            }
            let first = tokio::time::timeout(patience, sniff::peek_first_byte(&tcp)).await;
            let first = match first {
                Ok(Ok(Some(first))) => first,
                Ok(_) => {
                    metrics.tls_failure(TlsFailure::Closed);
                    return None;
                }
                Err(_) => {
                    metrics.tls_failure(TlsFailure::Timeout);
                    return None;
                }
            };
            match sniff::classify(first) {
                FirstByte::Tls => {
                    match tokio::time::timeout(patience, self.acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            metrics.tls_handshake();
                            Some(tls)
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "TLS handshake failed");
                            metrics.tls_failure(TlsFailure::of_handshake(&error));
                            None
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            metrics.tls_failure(TlsFailure::Timeout);
                            None
                        }
                    }
                }
                FirstByte::PlainHttp => {
                    metrics.tls_failure(TlsFailure::PlainHttp);
                    let started = std::time::Instant::now();
                    let request_id = RequestId::generate();
                    let method = sniff::read_plain_head(&mut tcp, patience).await;
                    // Queued before the answer is sent, like every other request's record.
                    self.state
                        .audit
                        .record_refusal(
                            &request_id,
                            method.as_ref(),
                            client.ip(),
                            &policy.config.audit,
                            started,
                            ProblemCode::PlainHttp,
                        )
                        .await;
                    sniff::answer_plain_http(tcp, &request_id, patience).await;
                    None
                }
                FirstByte::Unknown => {
                    metrics.tls_failure(TlsFailure::NotTls);
                    None
                }
            }
        };
        // A connection still handshaking when shutdown starts is simply dropped.
        let tls = tokio::select! {
            tls = establish => tls,
            _ = self.stopping.wait_for(|stopping| *stopping) => None,
        };
        let Some(tls) = tls else { return };

        let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
        let conn = Arc::new(ConnInfo { peer: client });
        let state = self.state.clone();
        let service =
            service_fn(move |request| proxy::handle(request, conn.clone(), state.clone()));
        let io = TokioIo::new(tls);
        let result = if h2 {
            self.watcher
                .watch(http2_builder(limits).serve_connection(io, service))
                .await
        } else {
            self.watcher
                .watch(http1_builder(limits).serve_connection(io, service))
                .await
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

fn http1_builder(limits: &ServerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_headers(limits.max_headers * PARSER_HEADROOM)
        .max_buf_size((limits.max_header_bytes * PARSER_HEADROOM).max(8192));
    builder
}

fn http2_builder(limits: &ServerConfig) -> http2::Builder<TokioExecutor> {
    let h2 = &limits.http2;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_reset_streams)
        .keep_alive_interval(h2.keep_alive_interval)
        .keep_alive_timeout(h2.keep_alive_timeout)
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes * PARSER_HEADROOM).unwrap_or(u32::MAX),
        );
    builder
}
