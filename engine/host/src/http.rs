//! The HTTP allow-list: every outgoing request a plugin makes, redirect hops included (a
//! wasi-http guest follows redirects itself, so each hop is a new request), is checked here
//! against the step's `allow.http` patterns before any connection is made.

use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use crate::capture::{LogLine, LogSink, LogSource};
use crate::redact::Redactor;
use crate::{HostPattern, Level};

type ResponseFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

/// How many refused requests are logged, one line each, per step. A plugin that retries a
/// refused host in a loop must not write one engine line per attempt without end.
pub(crate) const MAX_REFUSALS_LOGGED: usize = 100;

pub(crate) struct AllowList {
    pub(crate) patterns: Vec<HostPattern>,
    pub(crate) logs: LogSink,
    pub(crate) redactor: Redactor,
    /// Refused requests so far.
    pub(crate) refused: usize,
}

impl AllowList {
    /// The host and port a request goes to, with the scheme's default port filled in.
    fn destination(uri: &http::Uri) -> Option<(String, u16)> {
        let authority = uri.authority()?;
        let port = authority.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        Some((authority.host().to_owned(), port))
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        self.patterns.iter().any(|p| p.matches(host, port))
    }
}

impl WasiHttpHooks for AllowList {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> ResponseFuture {
        let allowed = match Self::destination(request.uri()) {
            Some((host, port)) if self.allows(&host, port) => true,
            Some((host, port)) => {
                self.refused += 1;
                let message = match self.refused {
                    n if n < MAX_REFUSALS_LOGGED => Some(format!(
                        "http request to `{host}:{port}` refused: the step's allow.http does not grant it (add `{host}` or `{host}:{port}`)"
                    )),
                    MAX_REFUSALS_LOGGED => Some(format!(
                        "http request to `{host}:{port}` refused; {MAX_REFUSALS_LOGGED} requests were refused, further refusals are not logged"
                    )),
                    _ => None,
                };
                if let Some(message) = message {
                    (self.logs)(LogLine {
                        level: Level::Warn,
                        source: LogSource::Engine,
                        message: self.redactor.redact(&message),
                    });
                }
                false
            }
            None => false,
        };
        if !allowed {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
