//! Outgoing HTTP requests to endpoints that users configure (flow `http` steps, webhooks),
//! guarded against server-side request forgery.
//!
//! Every hop of a request, redirects included, is checked before any connection is made:
//! only http and https, and the host's addresses must all be public unless the operator's
//! allow-list opens them. A host name is resolved here, and the connection then goes either
//! to exactly the addresses that were checked or through a resolver that refuses anything
//! non-public, so a name cannot pass the check and then lead somewhere internal.

mod policy;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;

use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

pub use policy::{classify, AddressClass, AllowRule, IpNetwork, OutgoingPolicy};

/// The `User-Agent` of every outgoing request unless the request sets its own.
pub const USER_AGENT: &str = concat!("Voronka/", env!("CARGO_PKG_VERSION"));

/// Headers the transport computes itself; taking them from a request could desynchronise
/// the framing or point the request at a different virtual host than the one checked.
const TRANSPORT_HEADERS: [HeaderName; 4] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
];

/// One outgoing request.
#[derive(Debug, Clone)]
pub struct OutgoingRequest {
    /// The HTTP method.
    pub method: Method,
    /// An absolute http or https URL.
    pub url: String,
    /// Extra headers; names are case-insensitive and may repeat.
    pub headers: Vec<(String, String)>,
    /// The request body, if any.
    pub body: Option<Bytes>,
    /// The whole request's time budget, capped by the policy; zero means the policy's maximum.
    pub timeout: Duration,
}

impl OutgoingRequest {
    /// A request without headers or body, limited only by the policy's maximum timeout.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        OutgoingRequest {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout: Duration::ZERO,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets a JSON body and its content type.
    pub fn json(mut self, value: &serde_json::Value) -> Self {
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
        self.headers
            .push(("content-type".to_owned(), "application/json".to_owned()));
        self.body = Some(Bytes::from(value.to_string()));
        self
    }

    /// Sets the time budget.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The answer to an outgoing request (after redirects).
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers in arrival order, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The complete body.
    pub body: Bytes,
    /// The body parsed as JSON, whatever the content type said, when it parses.
    pub json: Option<serde_json::Value>,
}

impl OutgoingResponse {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why an outgoing request failed. Messages never contain header values, which may be secrets.
#[derive(Debug, thiserror::Error)]
pub enum OutgoingError {
    /// The URL does not parse, lacks a host, or is not http/https (also for redirect targets).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A header name or value is not valid HTTP.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The host is or resolves to an address the policy does not let requests reach.
    #[error("{}", forbidden_message(.host.as_deref(), *.addr, *.class))]
    ForbiddenAddress {
        /// The host name that resolved to the address; `None` for a literal IP.
        host: Option<String>,
        /// The refused address.
        addr: IpAddr,
        /// Why the address is refused.
        class: AddressClass,
    },
    /// No complete answer arrived within the time budget.
    #[error("no complete response within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The host could not be resolved or the connection could not be made.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The response body is larger than the policy allows.
    #[error("response body exceeds the {limit}-byte limit")]
    TooLarge {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// The request was redirected more often than the policy allows.
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    /// Any other HTTP or TLS failure.
    #[error("HTTP error: {0}")]
    Protocol(String),
}

impl OutgoingError {
    /// A stable machine-readable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            OutgoingError::InvalidUrl(_) => "invalid_url",
            OutgoingError::InvalidRequest(_) => "invalid_request",
            OutgoingError::ForbiddenAddress { .. } => "forbidden_address",
            OutgoingError::Timeout(_) => "timeout",
            OutgoingError::Connect(_) => "connect",
            OutgoingError::TooLarge { .. } => "too_large",
            OutgoingError::TooManyRedirects(_) => "too_many_redirects",
            OutgoingError::Protocol(_) => "protocol",
        }
    }
}

fn forbidden_message(host: Option<&str>, addr: IpAddr, class: AddressClass) -> String {
    let class = class.with_article();
    match host {
        None => format!("{addr} is {class} address; add it to outgoing_allow to permit it"),
        Some(host) => format!(
            "{host} resolves to {addr}, which is {class} address; \
             add the address to outgoing_allow to permit it"
        ),
    }
}

/// The refusal the shared client's resolver reports; found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{}", forbidden_message(Some(.host), *.addr, *.class))]
struct Refused {
    host: String,
    addr: IpAddr,
    class: AddressClass,
}

/// Resolver of the shared client: it is only used for names whose addresses were all public
/// when checked, so anything else now means the name changed its answer and is refused.
struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                let class = classify(addr.ip());
                if !class.is_public() {
                    return Err(Box::new(Refused {
                        host,
                        addr: addr.ip(),
                        class,
                    })
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Sends outgoing requests under an [`OutgoingPolicy`]; clones share connections.
#[derive(Debug, Clone)]
pub struct OutgoingClient {
    policy: Arc<OutgoingPolicy>,
    /// Pooled client for literal addresses and public names; an error if it could not be built.
    shared: Result<reqwest::Client, String>,
}

fn base_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        // Redirects are followed by hand so that each hop goes through the address check.
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        // A proxy would make the connection on our behalf to an address we never checked.
        .no_proxy()
        .dns_resolver(Arc::new(PublicOnlyResolver))
}

impl OutgoingClient {
    /// A client enforcing `policy`.
    pub fn new(policy: OutgoingPolicy) -> Self {
        let shared = base_builder().build().map_err(|e| {
            tracing::error!(error = %e, "outgoing HTTP client could not be built");
            error_chain(&e)
        });
        OutgoingClient {
            policy: Arc::new(policy),
            shared,
        }
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &OutgoingPolicy {
        &self.policy
    }

    /// Sends a request, following redirects, and reads the whole response.
    pub async fn send(&self, req: OutgoingRequest) -> Result<OutgoingResponse, OutgoingError> {
        let budget = if req.timeout.is_zero() {
            self.policy.timeout_max
        } else {
            req.timeout.min(self.policy.timeout_max)
        };
        // One deadline over resolution, every hop and the body, so a slow drip of bytes
        // cannot hold a flow step open past its budget.
        match tokio::time::timeout(budget, self.send_within_budget(req)).await {
            Ok(result) => result,
            Err(_) => Err(OutgoingError::Timeout(budget)),
        }
    }

    async fn send_within_budget(
        &self,
        req: OutgoingRequest,
    ) -> Result<OutgoingResponse, OutgoingError> {
        let mut headers = header_map(&req.headers)?;
        let mut url = Url::parse(&req.url).map_err(|e| OutgoingError::InvalidUrl(e.to_string()))?;
        let mut method = req.method;
        let mut body = req.body;
        let mut redirects = 0;
        loop {
            let client = self.client_for(&url).await?;
            let mut builder = client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(body) = &body {
                builder = builder.body(body.clone());
            }
            let response = builder.send().await.map_err(map_reqwest)?;
            let Some(next) = redirect_target(&response, &url)? else {
                return self.read_response(response).await;
            };
            if redirects >= self.policy.max_redirects {
                return Err(OutgoingError::TooManyRedirects(self.policy.max_redirects));
            }
            redirects += 1;
            let status = response.status();
            let becomes_get = (status == StatusCode::SEE_OTHER && method != Method::HEAD)
                || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                    && method == Method::POST);
            if becomes_get {
                method = Method::GET;
                body = None;
                headers.remove(header::CONTENT_TYPE);
            }
            if url.host_str() != next.host_str()
                || url.port_or_known_default() != next.port_or_known_default()
            {
                // Credentials meant for one host must not be handed to whatever host it
                // redirects to.
                for name in [
                    header::AUTHORIZATION,
                    header::COOKIE,
                    header::PROXY_AUTHORIZATION,
                ] {
                    headers.remove(name);
                }
            }
            tracing::debug!(
                status = status.as_u16(),
                hop = redirects,
                "following redirect"
            );
            url = next;
        }
    }

    /// Checks `url`'s host against the policy and picks the client that will connect to
    /// exactly the addresses checked.
    async fn client_for(&self, url: &Url) -> Result<reqwest::Client, OutgoingError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OutgoingError::InvalidUrl(format!(
                "scheme {:?} is not allowed; only http and https are",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| OutgoingError::InvalidUrl("the URL has no host".to_owned()))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| OutgoingError::InvalidUrl("the URL has no port".to_owned()))?;

        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            // Literal addresses never reach a resolver, so this check is the only one.
            self.check(None, ip, port)?;
            return self.shared();
        }

        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| OutgoingError::Connect(format!("could not resolve {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(OutgoingError::Connect(format!(
                "{host} does not resolve to any address"
            )));
        }
        for addr in &addrs {
            self.check(Some(host), addr.ip(), port)?;
        }
        if addrs.iter().all(|a| classify(a.ip()).is_public()) {
            return self.shared();
        }
        // Allow-listed internal names get a client pinned to the checked addresses: a
        // second lookup could answer differently, and the shared resolver cannot tell which
        // port (and therefore which allow rule) a lookup is for.
        base_builder()
            .resolve_to_addrs(host, &addrs)
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| OutgoingError::Protocol(error_chain(&e)))
    }

    fn check(&self, host: Option<&str>, ip: IpAddr, port: u16) -> Result<(), OutgoingError> {
        self.policy.check(ip, port).map_err(|class| {
            tracing::debug!(host, %ip, port, class = class.label(), "outgoing request refused");
            OutgoingError::ForbiddenAddress {
                host: host.map(str::to_owned),
                addr: ip,
                class,
            }
        })
    }

    fn shared(&self) -> Result<reqwest::Client, OutgoingError> {
        self.shared
            .clone()
            .map_err(|e| OutgoingError::Protocol(format!("HTTP client unavailable: {e}")))
    }

    async fn read_response(
        &self,
        mut response: reqwest::Response,
    ) -> Result<OutgoingResponse, OutgoingError> {
        let limit = self.policy.max_response_bytes;
        let too_large = || OutgoingError::TooLarge { limit };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let declared = response.content_length();
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(declared.map_or(0, |len| len as usize));
        while let Some(chunk) = response.chunk().await.map_err(map_reqwest)? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let json = if body.is_empty() {
            None
        } else {
            serde_json::from_slice(&body).ok()
        };
        Ok(OutgoingResponse {
            status,
            headers,
            body: Bytes::from(body),
            json,
        })
    }
}

fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, OutgoingError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let header_name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            OutgoingError::InvalidRequest(format!("{name:?} is not a valid header name"))
        })?;
        if TRANSPORT_HEADERS.contains(&header_name) {
            continue;
        }
        let header_value = HeaderValue::from_str(value).map_err(|_| {
            OutgoingError::InvalidRequest(format!("the value of header {header_name} is not valid"))
        })?;
        map.append(header_name, header_value);
    }
    Ok(map)
}

/// Where a response redirects to, if it is a redirect that should be followed.
fn redirect_target(
    response: &reqwest::Response,
    current: &Url,
) -> Result<Option<Url>, OutgoingError> {
    let status = response.status();
    if !matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    ) {
        return Ok(None);
    }
    let Some(location) = response.headers().get(header::LOCATION) else {
        return Ok(None);
    };
    let location = location.to_str().map_err(|_| {
        OutgoingError::Protocol("the redirect location is not valid text".to_owned())
    })?;
    current
        .join(location)
        .map(Some)
        .map_err(|e| OutgoingError::InvalidUrl(format!("redirect location: {e}")))
}

/// Maps a reqwest failure to our error kinds, recognising our own resolver's refusals.
fn map_reqwest(err: reqwest::Error) -> OutgoingError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return OutgoingError::ForbiddenAddress {
                host: Some(refused.host.clone()),
                addr: refused.addr,
                class: refused.class,
            };
        }
        source = e.source();
    }
    if err.is_connect() {
        return OutgoingError::Connect(error_chain(&err.without_url()));
    }
    OutgoingError::Protocol(error_chain(&err.without_url()))
}

/// An error and its causes on one line; reqwest's own message alone hides the cause.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
