//! How a setting's text becomes its value: durations, whole numbers in a range, URLs,
//! addresses, keywords. Each reader takes the text as given (`None`: not given) and returns
//! the value or the reason it is refused; the caller names the setting.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::Secret;
use crate::net::{plain_http_url, NotPlain};
use crate::providers::guard::RateLimit;

/// A setting's reader: its text as given (`None`: not given) to its value.
pub(super) type Reader<T> = Box<dyn Fn(Option<&str>) -> Result<T, String>>;

/// The longest duration any setting takes: longer ones are typing mistakes, and added to a
/// clock (`Instant::now() + d`) a huge one overflows at first use instead of here.
const MAX_SETTING_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Upper bounds of the timeouts that are added to "now" (idle, connection_init, callbacks).
pub(super) const MINUTE: Duration = Duration::from_secs(60);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);

pub(super) fn parse_duration(raw: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(raw.trim())
        .map_err(|e| format!("`{raw}` is not a duration ({e}); write e.g. 500ms, 5s, 1h"))?;
    if duration > MAX_SETTING_DURATION {
        return Err(format!("`{raw}` is longer than 30 days, the longest any duration setting takes"));
    }
    Ok(duration)
}

pub(super) fn parse_whole(raw: &str, range: RangeInclusive<u64>) -> Result<u64, String> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| format!("`{raw}` is not a whole number from {} to {}", range.start(), range.end()))
}

/// A duration of zero is refused where it would mean "never wait" or "never again".
pub(super) fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    let duration = parse_duration(raw)?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

/// A duration from zero to 30 days.
pub(super) fn duration(default: &'static str) -> Reader<Duration> {
    Box::new(move |raw| parse_duration(raw.unwrap_or(default)))
}

/// A duration longer than zero.
pub(super) fn positive_duration(default: &'static str) -> Reader<Duration> {
    Box::new(move |raw| parse_positive_duration(raw.unwrap_or(default)))
}

/// A duration longer than zero and at most `max`: a timer's deadline is `now + d`, and an
/// unbounded duration would overflow it at first use.
pub(super) fn duration_up_to(default: &'static str, max: Duration) -> Reader<Duration> {
    Box::new(move |raw| {
        let duration = parse_positive_duration(raw.unwrap_or(default))?;
        if duration > max {
            return Err(format!("must be at most {}", humantime::format_duration(max)));
        }
        Ok(duration)
    })
}

/// A whole number in `range` (the default is not checked against it).
pub(super) fn whole<T: TryFrom<u64> + 'static>(default: u64, range: RangeInclusive<u64>) -> Reader<T> {
    Box::new(move |raw| {
        let n = raw.map_or(Ok(default), |raw| parse_whole(raw, range.clone()))?;
        T::try_from(n).map_err(|_| format!("`{n}` is too large for this machine"))
    })
}

/// A whole number from 1 to `max`.
pub(super) fn positive<T: TryFrom<u64> + 'static>(default: u64, max: u64) -> Reader<T> {
    whole(default, 1..=max)
}

/// One of a few words (trimmed); `neither` completes the refusal: "`x` {neither}".
pub(super) fn keyword<T: Copy + 'static>(
    default: T,
    words: &'static [(&'static str, T)],
    neither: &'static str,
) -> Reader<T> {
    Box::new(move |raw| match raw.map(str::trim) {
        None => Ok(default),
        Some(given) => words
            .iter()
            .find(|(word, _)| *word == given)
            .map(|(_, value)| *value)
            .ok_or_else(|| format!("`{given}` {neither}")),
    })
}

pub(super) fn boolean(default: bool) -> Reader<bool> {
    const WORDS: &[(&str, bool)] =
        &[("true", true), ("on", true), ("1", true), ("false", false), ("off", false), ("0", false)];
    keyword(default, WORDS, "is neither true nor false")
}

/// Text taken as written.
pub(super) fn text(default: &'static str) -> Reader<String> {
    Box::new(move |raw| Ok(raw.unwrap_or(default).to_owned()))
}

/// A quota such as `600/min`, or `off`.
pub(super) fn rate_limit(default: &'static str) -> Reader<RateLimit> {
    Box::new(move |raw| RateLimit::parse(raw.unwrap_or(default)))
}

/// `parse` where given, else `None`.
pub(super) fn optional<T: 'static>(parse: fn(&str) -> Result<T, String>) -> Reader<Option<T>> {
    Box::new(move |raw| raw.map(parse).transpose())
}

/// An address and port; `default` is also the example a refusal gives.
pub(super) fn address(default: &'static str) -> Reader<SocketAddr> {
    Box::new(move |raw| {
        let raw = raw.unwrap_or(default);
        raw.trim()
            .parse::<SocketAddr>()
            .map_err(|_| format!("`{raw}` is not an address and port such as {default}"))
    })
}

/// An address and port, or nothing (an empty value says nothing).
pub(super) fn optional_address(example: &'static str) -> Reader<Option<SocketAddr>> {
    Box::new(move |raw| {
        let Some(addr) = raw.map(str::trim).filter(|addr| !addr.is_empty()) else { return Ok(None) };
        addr.parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| format!("`{addr}` is not an address and port such as {example}"))
    })
}

/// Text that says something (trimmed, not empty), or nothing.
pub(super) fn non_empty(raw: Option<&str>) -> Option<&str> {
    raw.map(str::trim).filter(|text| !text.is_empty())
}

/// A path, or nothing.
pub(super) fn path(raw: Option<&str>) -> Result<Option<PathBuf>, String> {
    Ok(non_empty(raw).map(PathBuf::from))
}

/// A secret, or nothing.
pub(super) fn secret(raw: Option<&str>) -> Result<Option<Secret>, String> {
    Ok(non_empty(raw).map(Secret::new))
}

pub(super) fn redis_url(raw: Option<&str>) -> Result<Option<Secret>, String> {
    let Some(url) = non_empty(raw) else { return Ok(None) };
    let scheme = url.split("://").next().unwrap_or("");
    if !matches!(scheme, "redis" | "rediss") {
        return Err("must start with redis:// or rediss://".into());
    }
    Ok(Some(Secret::new(url)))
}

/// A value `GATEWAY_AUTH=jwt` cannot do without.
pub(super) fn required_with_jwt(raw: Option<&str>) -> Result<String, String> {
    non_empty(raw).map(str::to_owned).ok_or_else(|| "is required with GATEWAY_AUTH=jwt".into())
}

/// The keys every token is checked against: fetched over plain HTTP, anyone on the path could
/// substitute their own and mint tokens. `http://` is allowed only to a loopback address (a
/// sidecar, a test issuer).
pub(super) fn jwks_url(raw: Option<&str>) -> Result<String, String> {
    let url = required_with_jwt(raw)?;
    check_base_url(&url)?;
    let parsed = reqwest::Url::parse(&url).map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    let host = parsed.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if parsed.scheme() != "https" && !loopback {
        return Err(format!("`{url}` must be https:// (plain http:// only to a loopback address)"));
    }
    Ok(url)
}

/// How often the JWKS is fetched again: at least every second.
pub(super) fn jwks_refresh(raw: Option<&str>) -> Result<Duration, String> {
    let every = parse_duration(raw.unwrap_or("5m"))?;
    if every < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(every)
}

/// Signing algorithms a JWKS can verify: no shared-secret (HS*) ones.
pub(super) fn jwt_algorithms(raw: Option<&str>) -> Result<Vec<jsonwebtoken::Algorithm>, String> {
    use jsonwebtoken::Algorithm;
    let algorithms = raw
        .unwrap_or("RS256,ES256")
        .split(',')
        .map(|name| name.trim().parse::<Algorithm>().map_err(|_| name.trim().to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|bad| format!("`{bad}` is not a JWT algorithm (RS256, ES256, …)"))?;
    if algorithms.iter().any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)) {
        return Err("shared-secret (HS*) algorithms cannot be verified with a JWKS".into());
    }
    Ok(algorithms)
}

/// Callback URL prefixes, comma-separated (none: an empty list). Each is an http(s) URL with a
/// host and no credentials, query or fragment: a callback URL is matched against its scheme,
/// host, port and path alone.
pub(super) fn callback_urls(raw: Option<&str>) -> Result<Vec<reqwest::Url>, String> {
    raw.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|text| {
            plain_http_url(text).map_err(|problem| match problem {
                NotPlain::Unparsable(e) => format!("`{text}` is not a URL ({e})"),
                NotPlain::Scheme | NotPlain::NoHost => {
                    format!("`{text}` is not an http:// or https:// URL with a host")
                }
                // Not echoed: it holds the credentials.
                NotPlain::Credentials => "a callback URL must not carry credentials".into(),
                NotPlain::QueryOrFragment => format!("`{text}` must not have a query or fragment"),
            })
        })
        .collect()
}

pub(super) fn parse_base_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    check_base_url(raw)?;
    Ok(raw.trim_end_matches('/').to_owned())
}

/// A base URL must be plain http(s) with a host, and carry no credentials, query or fragment
/// (they would end up in every upstream request and in logs).
fn check_base_url(raw: &str) -> Result<(), String> {
    plain_http_url(raw).map(drop).map_err(|problem| match problem {
        NotPlain::Unparsable(e) => format!("`{raw}` is not a URL ({e})"),
        NotPlain::Scheme => format!("`{raw}` must start with https:// (or http://)"),
        NotPlain::NoHost => format!("`{raw}` has no host"),
        NotPlain::Credentials => "must not carry credentials; set the API key instead".into(),
        NotPlain::QueryOrFragment => format!("`{raw}` must not have a query or fragment"),
    })
}
