//! A blocking HTTP client over `wasi:http/outgoing-handler`.
//!
//! One function, [`request`], sends a request and returns the whole response. It is small on
//! purpose: no redirects, no cookies, no retries, no JSON; a plugin that wants them builds
//! them on top. Requests reach only the hosts the step's `allow.http` grants; any other fails
//! with [`HttpError::Wasi`] holding `HTTP-request-denied`.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::bindings::wasi::clocks::monotonic_clock;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    Fields, FutureIncomingResponse, IncomingBody, Method, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use crate::bindings::wasi::io::poll::{self, Pollable};
use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};

pub use crate::bindings::wasi::http::types::{ErrorCode, HeaderError};

/// The most response body [`request`] keeps, 16 MiB.
///
/// The body is held in the plugin's memory, whose limit is a few hundred MiB at most; a
/// deploy plugin reads status pages and API answers, and anything larger is more likely a
/// misconfigured URL than data it needs.
pub const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

/// How many bytes to ask for per read of the response body. Large enough that a big body
/// takes few host calls, small enough that an early cap check wastes little.
const READ_CHUNK: u64 = 64 * 1024;

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The headers in the order received; names are lowercase as WASI delivers them.
    pub headers: Vec<(String, String)>,
    /// The whole body, at most [`MAX_RESPONSE_BODY`] bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a request did not produce a response.
#[derive(Debug)]
pub enum HttpError {
    /// The URL is not `http://host[:port][/path][?query]` or `https://...`.
    InvalidUrl { url: String, reason: &'static str },
    /// A header name or value was refused.
    InvalidHeader(HeaderError),
    /// The host refused or failed the request. `HTTP-request-denied` means the step's
    /// `allow.http` does not grant the URL's host.
    Wasi(ErrorCode),
    /// The whole exchange took longer than the timeout given to [`request`].
    Timeout(Duration),
    /// The response body is larger than [`MAX_RESPONSE_BODY`].
    BodyTooLarge { limit: usize },
    /// Reading or writing a body stream failed, with the host's description.
    Stream(String),
}

impl HttpError {
    /// The WASI error code, when the host reported one.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            HttpError::Wasi(code) => Some(code),
            _ => None,
        }
    }

    /// Whether trying again later might succeed: timeouts, refused or dropped connections,
    /// DNS trouble. A plugin can map these to `step-error::transient`.
    pub fn is_transient(&self) -> bool {
        match self {
            HttpError::Timeout(_) | HttpError::Stream(_) => true,
            HttpError::Wasi(code) => matches!(
                code,
                ErrorCode::DnsTimeout
                    | ErrorCode::DnsError(_)
                    | ErrorCode::DestinationUnavailable
                    | ErrorCode::ConnectionRefused
                    | ErrorCode::ConnectionTerminated
                    | ErrorCode::ConnectionTimeout
                    | ErrorCode::ConnectionReadTimeout
                    | ErrorCode::ConnectionWriteTimeout
                    | ErrorCode::ConnectionLimitReached
                    | ErrorCode::HttpResponseIncomplete
                    | ErrorCode::HttpResponseTimeout
            ),
            _ => false,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidUrl { url, reason } => write!(f, "invalid URL `{url}`: {reason}"),
            HttpError::InvalidHeader(e) => write!(f, "invalid header: {}", header_error_name(e)),
            HttpError::Wasi(code) => f.write_str(&error_code_name(code)),
            HttpError::Timeout(t) => write!(f, "timed out after {} ms", t.as_millis()),
            HttpError::BodyTooLarge { limit } => {
                write!(f, "response body larger than {limit} bytes")
            }
            HttpError::Stream(e) => write!(f, "body stream failed: {e}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<ErrorCode> for HttpError {
    fn from(code: ErrorCode) -> Self {
        HttpError::Wasi(code)
    }
}

/// Sends one request and waits for the whole response.
///
/// `method` is `GET`, `POST`, ... as written on the wire. `timeout` bounds the whole
/// exchange, from connecting to the last body byte; without it the request waits as long as
/// the host lets it (the step's own time limit still applies).
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Option<Duration>,
) -> Result<Response, HttpError> {
    let target = Target::parse(url)?;
    let deadline = Deadline::after(timeout);

    let fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    let fields = Fields::from_list(&fields).map_err(HttpError::InvalidHeader)?;
    let request = OutgoingRequest::new(fields);
    let invalid = |reason| HttpError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    request
        .set_method(&parse_method(method))
        .map_err(|()| invalid("method refused"))?;
    request
        .set_scheme(Some(&target.scheme))
        .map_err(|()| invalid("scheme refused"))?;
    request
        .set_authority(Some(target.authority))
        .map_err(|()| invalid("host refused"))?;
    request
        .set_path_with_query(Some(&target.path_with_query))
        .map_err(|()| invalid("path refused"))?;
    // The body resource must be taken before `handle` consumes the request.
    let outgoing_body = request.body().expect("a new request's body is taken once");

    let options = timeout.map(|t| {
        let options = RequestOptions::new();
        let ns = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        // A host may not support some of these; the overall deadline below still holds.
        let _ = options.set_connect_timeout(Some(ns));
        let _ = options.set_first_byte_timeout(Some(ns));
        let _ = options.set_between_bytes_timeout(Some(ns));
        options
    });

    // Send first, write the body after: the host streams the body to the server, and
    // writing a large body before anything reads it could fill the pipe and never return.
    let future = outgoing_handler::handle(request, options)?;
    let written = match body {
        Some(bytes) => write_body(&outgoing_body, bytes, &deadline),
        None => Ok(()),
    };
    let finished = OutgoingBody::finish(outgoing_body, None).map_err(HttpError::Wasi);

    // When the body could not be sent, the response usually says why more precisely than
    // the stream did; prefer its error. And when a response came, it is the outcome: a server
    // may answer before it has read the whole body, or the host may close the body stream as
    // the last byte is taken, and either makes the write fail after the request was handled.
    // Failing then would have the caller retry a request the server already acted on.
    let response = wait_response(&future, &deadline)?;
    drop((written, finished));

    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .expect("a new response's body is taken once");
    let body = read_body(&incoming, &deadline)?;
    // Trailers are not offered to plugins; finishing only releases the body.
    drop(IncomingBody::finish(incoming));

    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A shorthand for a `GET` with no headers.
pub fn get(url: &str, timeout: Option<Duration>) -> Result<Response, HttpError> {
    request("GET", url, &[], None, timeout)
}

/// The parts of an absolute URL that WASI wants separately.
struct Target<'a> {
    scheme: Scheme,
    authority: &'a str,
    path_with_query: String,
}

impl<'a> Target<'a> {
    fn parse(url: &'a str) -> Result<Self, HttpError> {
        let invalid = |reason| HttpError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("no `scheme://`"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(invalid("the scheme must be `http` or `https`")),
        };
        // A fragment is never sent to the server.
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_with_query) = rest.split_at(split);
        if authority.is_empty() {
            return Err(invalid("no host"));
        }
        if authority.contains('@') {
            return Err(invalid(
                "credentials in the URL are not supported; send a header",
            ));
        }
        // `http://host?q` is path `/` with query `q`; WASI wants the path spelled out.
        let path_with_query = match path_with_query {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Self {
            scheme,
            authority,
            path_with_query,
        })
    }
}

fn parse_method(method: &str) -> Method {
    match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    }
}

/// The moment the exchange must be over, on the monotonic clock.
struct Deadline {
    at: Option<(monotonic_clock::Instant, Duration)>,
}

impl Deadline {
    fn after(timeout: Option<Duration>) -> Self {
        let at = timeout.map(|t| {
            let ns = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
            (monotonic_clock::now().saturating_add(ns), t)
        });
        Self { at }
    }

    /// Blocks until `pollable` is ready, or fails when the deadline passes first.
    fn wait(&self, pollable: &Pollable) -> Result<(), HttpError> {
        let Some((at, timeout)) = self.at else {
            pollable.block();
            return Ok(());
        };
        let timer = monotonic_clock::subscribe_instant(at);
        let ready = poll::poll(&[pollable, &timer]);
        if ready.contains(&0) {
            Ok(())
        } else {
            Err(HttpError::Timeout(timeout))
        }
    }
}

fn wait_response(
    future: &FutureIncomingResponse,
    deadline: &Deadline,
) -> Result<crate::bindings::wasi::http::types::IncomingResponse, HttpError> {
    let ready = future.subscribe();
    loop {
        match future.get() {
            Some(Ok(Ok(response))) => return Ok(response),
            Some(Ok(Err(code))) => return Err(HttpError::Wasi(code)),
            Some(Err(())) => unreachable!("the response is taken only once"),
            None => deadline.wait(&ready)?,
        }
    }
}

fn write_body(body: &OutgoingBody, mut bytes: &[u8], deadline: &Deadline) -> Result<(), HttpError> {
    let stream = body.write().expect("a new body's stream is taken once");
    let result = write_all(&stream, &mut bytes, deadline);
    // The stream must go before the body is finished.
    drop(stream);
    result
}

fn write_all(
    stream: &OutputStream,
    bytes: &mut &[u8],
    deadline: &Deadline,
) -> Result<(), HttpError> {
    let ready = stream.subscribe();
    while !bytes.is_empty() {
        let room = stream.check_write().map_err(stream_error)?;
        if room == 0 {
            deadline.wait(&ready)?;
            continue;
        }
        let n = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        stream.write(&bytes[..n]).map_err(stream_error)?;
        *bytes = &bytes[n..];
    }
    stream.flush().map_err(stream_error)?;
    // `check-write` reports room again only once the flush completed.
    while stream.check_write().map_err(stream_error)? == 0 {
        deadline.wait(&ready)?;
    }
    Ok(())
}

fn read_body(body: &IncomingBody, deadline: &Deadline) -> Result<Vec<u8>, HttpError> {
    let stream: InputStream = body.stream().expect("a new body's stream is taken once");
    let ready = stream.subscribe();
    let mut out = Vec::new();
    loop {
        match stream.read(READ_CHUNK) {
            Ok(chunk) if chunk.is_empty() => deadline.wait(&ready)?,
            Ok(chunk) => {
                if out.len() + chunk.len() > MAX_RESPONSE_BODY {
                    return Err(HttpError::BodyTooLarge {
                        limit: MAX_RESPONSE_BODY,
                    });
                }
                out.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => return Ok(out),
            Err(e) => return Err(stream_error(e)),
        }
    }
}

fn stream_error(e: StreamError) -> HttpError {
    match e {
        StreamError::LastOperationFailed(e) => HttpError::Stream(e.to_debug_string()),
        StreamError::Closed => HttpError::Stream("closed early".to_string()),
    }
}

fn header_error_name(e: &HeaderError) -> &'static str {
    match e {
        HeaderError::InvalidSyntax => "invalid-syntax",
        HeaderError::Forbidden => "forbidden",
        HeaderError::Immutable => "immutable",
    }
}

/// The WIT name of `code`, e.g. `HTTP-request-denied`, followed by its details if any.
///
/// The generated `Display` prints Rust names (`HttpRequestDenied`); the WIT names are what
/// the engine, its docs and other languages' plugins use, so people can search for them.
pub fn error_code_name(code: &ErrorCode) -> String {
    fn with<T: fmt::Debug>(name: &str, detail: &Option<T>) -> String {
        match detail {
            Some(d) => format!("{name} ({d:?})"),
            None => name.to_string(),
        }
    }
    let name = match code {
        ErrorCode::DnsTimeout => "DNS-timeout",
        ErrorCode::DnsError(p) => {
            let mut s = "DNS-error".to_string();
            if let Some(rcode) = &p.rcode {
                s.push_str(&format!(" ({rcode})"));
            }
            return s;
        }
        ErrorCode::DestinationNotFound => "destination-not-found",
        ErrorCode::DestinationUnavailable => "destination-unavailable",
        ErrorCode::DestinationIpProhibited => "destination-IP-prohibited",
        ErrorCode::DestinationIpUnroutable => "destination-IP-unroutable",
        ErrorCode::ConnectionRefused => "connection-refused",
        ErrorCode::ConnectionTerminated => "connection-terminated",
        ErrorCode::ConnectionTimeout => "connection-timeout",
        ErrorCode::ConnectionReadTimeout => "connection-read-timeout",
        ErrorCode::ConnectionWriteTimeout => "connection-write-timeout",
        ErrorCode::ConnectionLimitReached => "connection-limit-reached",
        ErrorCode::TlsProtocolError => "TLS-protocol-error",
        ErrorCode::TlsCertificateError => "TLS-certificate-error",
        ErrorCode::TlsAlertReceived(p) => return with("TLS-alert-received", &p.alert_message),
        ErrorCode::HttpRequestDenied => "HTTP-request-denied",
        ErrorCode::HttpRequestLengthRequired => "HTTP-request-length-required",
        ErrorCode::HttpRequestBodySize(n) => return with("HTTP-request-body-size", n),
        ErrorCode::HttpRequestMethodInvalid => "HTTP-request-method-invalid",
        ErrorCode::HttpRequestUriInvalid => "HTTP-request-URI-invalid",
        ErrorCode::HttpRequestUriTooLong => "HTTP-request-URI-too-long",
        ErrorCode::HttpRequestHeaderSectionSize(n) => {
            return with("HTTP-request-header-section-size", n);
        }
        ErrorCode::HttpRequestHeaderSize(p) => {
            return with(
                "HTTP-request-header-size",
                &p.as_ref().and_then(|p| p.field_name.clone()),
            );
        }
        ErrorCode::HttpRequestTrailerSectionSize(n) => {
            return with("HTTP-request-trailer-section-size", n);
        }
        ErrorCode::HttpRequestTrailerSize(p) => {
            return with("HTTP-request-trailer-size", &p.field_name);
        }
        ErrorCode::HttpResponseIncomplete => "HTTP-response-incomplete",
        ErrorCode::HttpResponseHeaderSectionSize(n) => {
            return with("HTTP-response-header-section-size", n);
        }
        ErrorCode::HttpResponseHeaderSize(p) => {
            return with("HTTP-response-header-size", &p.field_name);
        }
        ErrorCode::HttpResponseBodySize(n) => return with("HTTP-response-body-size", n),
        ErrorCode::HttpResponseTrailerSectionSize(n) => {
            return with("HTTP-response-trailer-section-size", n);
        }
        ErrorCode::HttpResponseTrailerSize(p) => {
            return with("HTTP-response-trailer-size", &p.field_name);
        }
        ErrorCode::HttpResponseTransferCoding(c) => {
            return with("HTTP-response-transfer-coding", c);
        }
        ErrorCode::HttpResponseContentCoding(c) => return with("HTTP-response-content-coding", c),
        ErrorCode::HttpResponseTimeout => "HTTP-response-timeout",
        ErrorCode::HttpUpgradeFailed => "HTTP-upgrade-failed",
        ErrorCode::HttpProtocolError => "HTTP-protocol-error",
        ErrorCode::LoopDetected => "loop-detected",
        ErrorCode::ConfigurationError => "configuration-error",
        ErrorCode::InternalError(m) => {
            return match m {
                Some(m) => format!("internal-error: {m}"),
                None => "internal-error".to_string(),
            };
        }
    };
    name.to_string()
}
