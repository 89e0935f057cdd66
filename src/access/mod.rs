//! Who may ask, and what: client authentication (`GATEWAY_AUTH`: none, API keys stored as
//! hashes, or JWTs verified against a JWKS), the router's shared secret, and each client's
//! rights (which accounts it may read).
//!
//! Owns: reading credentials from a request, verifying them, and what a client may read.
//! Knows nothing of GraphQL or HTTP routes: the server asks [`Access::authenticate`] and puts
//! the [`Client`] in the request; resolvers ask [`Rights::allows`] before any upstream call.

pub mod quota;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::Secret;
use crate::providers::Account;

/// How clients prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone who reaches the port reads every account (the default only with `--demo`).
    None,
    /// `Authorization: Bearer <key>`, keys configured as SHA-256 hashes.
    ApiKey,
    /// `Authorization: Bearer <JWT>`, verified against a JWKS.
    Jwt,
}

impl AuthMode {
    pub fn parse(text: &str) -> Result<AuthMode, String> {
        match text.trim() {
            "none" => Ok(AuthMode::None),
            "api-key" => Ok(AuthMode::ApiKey),
            "jwt" => Ok(AuthMode::Jwt),
            other => Err(format!("`{other}` is not one of none, api-key, jwt")),
        }
    }
}

/// Which accounts a client may read: account names, `provider:<slug>` for every account of a
/// provider, or everything.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Rights {
    /// `None`: everything.
    allowed: Option<BTreeSet<String>>,
    /// Computed once: it keys every replayed answer of the client.
    fingerprint: Arc<str>,
}

impl Rights {
    pub fn all() -> Rights {
        Rights { allowed: None, fingerprint: Arc::from("") }
    }

    /// No account at all.
    pub fn none() -> Rights {
        Rights::from_list::<&str>(&[])
    }

    /// From a list as configured (`*` alone: everything).
    pub fn from_list<S: AsRef<str>>(items: &[S]) -> Rights {
        if items.iter().any(|item| item.as_ref().trim() == "*") {
            return Rights::all();
        }
        let allowed: BTreeSet<String> =
            items.iter().map(|item| item.as_ref().trim().to_owned()).filter(|i| !i.is_empty()).collect();
        let joined: Vec<&str> = allowed.iter().map(String::as_str).collect();
        let digest = Sha256::digest(joined.join("\n").as_bytes());
        let fingerprint = Arc::from(format!("rights:{}\n", hex::encode(&digest[..12])));
        Rights { allowed: Some(allowed), fingerprint }
    }

    pub fn allows(&self, account: &Account) -> bool {
        match &self.allowed {
            None => true,
            Some(allowed) => {
                allowed.contains(&**account.name())
                    || allowed.iter().any(|item| item.strip_prefix("provider:") == Some(account.kind().slug))
            }
        }
    }

    /// Empty for everything; otherwise a short text that differs between different rights,
    /// for keys of caches whose answers depend on them.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.allowed {
            None => f.write_str("all"),
            Some(allowed) => f.debug_set().entries(allowed).finish(),
        }
    }
}

/// A client as authenticated: a name for logs (an API key's name, a JWT's `sub`, `router`,
/// `anonymous`) and its rights.
#[derive(Clone, Debug)]
pub struct Client {
    pub name: Arc<str>,
    pub rights: Rights,
    /// Came through the router's shared secret: query-planner operations, not a client's own.
    pub via_router: bool,
    /// When the credential stops proving anything (a JWT's `exp` plus the leeway); `None` for
    /// credentials that do not expire. A stream opened with it ends then.
    pub expires_at: Option<Instant>,
    /// Whether `GATEWAY_CLIENT_RATE_LIMIT` counts this client's lookups (by `name`). Not for
    /// `anonymous` nor the router's own identity: each stands for everyone behind it, and one
    /// budget shared by all would let any one of them spend it for the rest.
    pub metered: bool,
}

impl Client {
    /// Every request when authentication is off: made once, shared (it is on the hot path).
    pub fn anonymous() -> Client {
        static ANONYMOUS: std::sync::OnceLock<Client> = std::sync::OnceLock::new();
        ANONYMOUS
            .get_or_init(|| Client {
                name: Arc::from("anonymous"),
                rights: Rights::all(),
                via_router: false,
                expires_at: None,
                metered: false,
            })
            .clone()
    }
}

/// One configured API key.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub name: String,
    /// SHA-256 of the key, as hex.
    pub sha256: String,
    pub rights: Rights,
}

/// JWT verification settings.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// How often the JWKS is fetched again whatever happens, so that a key the issuer
    /// withdraws stops being accepted within this time.
    pub jwks_refresh: Duration,
    /// The claim listing the accounts a token may read (`*` for all).
    pub rights_claim: String,
}

/// Everything about access, from the configuration.
#[derive(Clone, Debug)]
pub struct AccessConfig {
    pub mode: AuthMode,
    pub api_keys: Vec<ApiKey>,
    pub jwt: Option<JwtConfig>,
    /// `Router-Authorization` values accepted: the current secret and the next (rotation).
    pub router_secrets: Vec<Secret>,
    /// With the router's secret, authenticate the client credentials it forwards
    /// (`Authorization`) instead of trusting the router with every account.
    pub trust_router_identity: bool,
}

impl AccessConfig {
    pub fn open() -> AccessConfig {
        AccessConfig {
            mode: AuthMode::None,
            api_keys: Vec::new(),
            jwt: None,
            router_secrets: Vec::new(),
            trust_router_identity: false,
        }
    }
}

/// Why a request is refused with 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    Missing,
    UnknownKey,
    BadToken(&'static str),
    BadRouterSecret,
}

impl Denied {
    pub fn message(self) -> String {
        match self {
            Denied::Missing => {
                "this gateway needs credentials: send `Authorization: Bearer <key or token>`".into()
            }
            Denied::UnknownKey => "the API key is not one this gateway knows".into(),
            Denied::BadToken(why) => format!("the token was refused: {why}"),
            Denied::BadRouterSecret => "the `Router-Authorization` secret is wrong".into(),
        }
    }
}

/// The JWKS is fetched again for an unknown `kid` at most this often (a client inventing
/// `kid`s must not make the gateway fetch per request).
const JWKS_REFRESH_MIN: Duration = Duration::from_secs(10);
/// A verified token is trusted again without verifying its signature for at most this long
/// (never past its own `exp`).
const VERIFIED_TOKEN_TTL: Duration = Duration::from_secs(60);
/// The longest a token is taken to live, whatever its `exp` says (a stream opened with it is
/// closed then at the latest).
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Verified tokens kept at most (each ~200 bytes: its digest and the client it proved).
const VERIFIED_TOKENS_MAX: u64 = 10_000;

pub struct Access {
    config: AccessConfig,
    keys: HashMap<String, ApiKey>,
    jwks: RwLock<(JwkSet, Option<Instant>)>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    /// Tokens verified recently, by their SHA-256 (the token itself is not kept), with the
    /// client each proved and until when: a signature check per request (ECDSA, RSA) costs
    /// more than answering a cached query. Emptied whenever the JWKS is fetched, so a key the
    /// issuer withdraws stops its tokens at that refresh.
    verified: moka::sync::Cache<[u8; 32], (Client, Instant)>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access").field("mode", &self.config.mode).field("api_keys", &self.keys.len()).finish()
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(flatten)]
    other: HashMap<String, serde_json::Value>,
}

impl Access {
    pub fn new(config: AccessConfig, http: reqwest::Client) -> Access {
        let keys = config.api_keys.iter().map(|key| (key.sha256.to_ascii_lowercase(), key.clone())).collect();
        Access {
            config,
            keys,
            jwks: RwLock::new((JwkSet { keys: Vec::new() }, None)),
            refreshing: tokio::sync::Mutex::new(()),
            http,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_TOKENS_MAX)
                .time_to_live(VERIFIED_TOKEN_TTL)
                .build(),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.config.mode
    }

    /// The client a request's headers prove, or why they prove none. `/livez`, `/readyz`
    /// and `/metrics` never ask.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Client, Denied> {
        self.admit(header(headers, "router-authorization"), bearer(headers)).await
    }

    /// The client that a router secret (`Router-Authorization`'s value) and a bearer
    /// credential prove, wherever they were sent: request headers, or a WebSocket's
    /// `connection_init` payload (where Hive Router puts the headers it sends a subgraph).
    pub async fn admit(
        &self,
        router_secret: Option<&str>,
        credential: Option<&str>,
    ) -> Result<Client, Denied> {
        if let Some(given) = router_secret {
            if !self.router_secret_matches(given) {
                return Err(Denied::BadRouterSecret);
            }
            if !self.config.trust_router_identity {
                return Ok(Client {
                    name: Arc::from("router"),
                    rights: Rights::all(),
                    via_router: true,
                    expires_at: None,
                    metered: false,
                });
            }
            let mut client = self.client(credential).await?;
            client.via_router = true;
            return Ok(client);
        }
        self.client(credential).await
    }

    /// The client a bearer credential proves (`None`: none was sent).
    pub async fn client(&self, credential: Option<&str>) -> Result<Client, Denied> {
        match self.config.mode {
            AuthMode::None => Ok(Client::anonymous()),
            AuthMode::ApiKey => {
                let key = credential.ok_or(Denied::Missing)?;
                let digest = hex::encode(Sha256::digest(key.as_bytes()));
                let known = self.keys.get(&digest).ok_or(Denied::UnknownKey)?;
                Ok(Client {
                    name: Arc::from(known.name.as_str()),
                    rights: known.rights.clone(),
                    via_router: false,
                    expires_at: None,
                    metered: true,
                })
            }
            AuthMode::Jwt => self.verify_jwt(credential.ok_or(Denied::Missing)?).await,
        }
    }

    fn router_secret_matches(&self, given: &str) -> bool {
        // Every secret is compared, in constant time, whatever matched first.
        self.config.router_secrets.iter().fold(false, |matched, secret| {
            let equal: bool = secret.expose().as_bytes().ct_eq(given.as_bytes()).into();
            matched | equal
        })
    }

    async fn verify_jwt(&self, token: &str) -> Result<Client, Denied> {
        let Some(config) = &self.config.jwt else { return Err(Denied::BadToken("JWT is not configured")) };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((client, until)) = self.verified.get(&digest) {
            if until > Instant::now() {
                return Ok(client);
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Denied::BadToken("not a JWT"))?;
        if !config.algorithms.contains(&header.alg) {
            return Err(Denied::BadToken("its algorithm is not allowed"));
        }
        let kid = header.kid.ok_or(Denied::BadToken("it names no key (kid)"))?;
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                self.refresh_jwks().await;
                self.key(&kid).ok_or(Denied::BadToken("its key (kid) is not in the issuer's JWKS"))?
            }
        };
        // The token's own algorithm (already checked against the allowed ones): jsonwebtoken
        // refuses a key whose family differs from any algorithm listed here.
        let mut validation = Validation::new(header.alg);
        validation.leeway = config.leeway.as_secs();
        // Off by default in jsonwebtoken: a token issued for later is not valid now.
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            Denied::BadToken(match error.kind() {
                ErrorKind::ExpiredSignature => "it has expired",
                ErrorKind::ImmatureSignature => "it is not valid yet",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
                _ => "it could not be verified",
            })
        })?;
        let rights = match data.claims.other.get(&config.rights_claim) {
            Some(serde_json::Value::Array(items)) => {
                Rights::from_list(&items.iter().filter_map(|item| item.as_str()).collect::<Vec<_>>())
            }
            Some(serde_json::Value::String(text)) => {
                Rights::from_list(&text.split([' ', ',']).collect::<Vec<_>>())
            }
            // No claim: no account.
            _ => Rights::none(),
        };
        // Accepted until `exp` plus the leeway, as the check above accepts it.
        let left = data.claims.other.get("exp").and_then(serde_json::Value::as_f64).map_or(0.0, |exp| {
            exp + config.leeway.as_secs_f64() - chrono::Utc::now().timestamp_millis() as f64 / 1000.0
        });
        let name = data.claims.sub.unwrap_or_else(|| "unnamed".into());
        // `exp` is required and was checked above; the clamp keeps a far-future one (any
        // number fits in a JSON token) from overflowing the clock.
        let expires_at =
            Instant::now() + Duration::from_secs_f64(left.clamp(0.0, MAX_TOKEN_LIFE.as_secs_f64()));
        let client = Client {
            name: Arc::from(name),
            rights,
            via_router: false,
            expires_at: Some(expires_at),
            metered: true,
        };
        if left > 0.0 {
            let until = Instant::now() + Duration::from_secs_f64(left.min(VERIFIED_TOKEN_TTL.as_secs_f64()));
            self.verified.insert(digest, (client.clone(), until));
        }
        Ok(client)
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        let jwks = self.jwks.read().ok()?;
        jwks.0.find(kid).and_then(|jwk| DecodingKey::from_jwk(jwk).ok())
    }

    /// Fetches the JWKS now, then again every `jwks_refresh` for as long as the gateway runs:
    /// without a schedule a known key was never fetched again, so a key the issuer withdrew
    /// kept working until a restart.
    pub async fn keep_jwks_fresh(self: Arc<Self>) {
        let Some(config) = &self.config.jwt else { return };
        let mut ticks = tokio::time::interval(config.jwks_refresh);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.fetch_jwks(true).await;
        }
    }

    /// Fetches the JWKS for a `kid` it does not have, unless it was fetched moments ago.
    async fn refresh_jwks(&self) {
        self.fetch_jwks(false).await;
    }

    /// `scheduled`: the schedule's own fetch, which no recent fetch for an unknown `kid`
    /// replaces.
    async fn fetch_jwks(&self, scheduled: bool) {
        let Some(config) = &self.config.jwt else { return };
        let _one = self.refreshing.lock().await;
        let recent =
            self.jwks.read().ok().and_then(|jwks| jwks.1).is_some_and(|at| at.elapsed() < JWKS_REFRESH_MIN);
        if recent && !scheduled {
            return;
        }
        let fetched = async {
            let response =
                self.http.get(&config.jwks_url).timeout(Duration::from_secs(5)).send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            serde_json::from_slice::<JwkSet>(&response.bytes().await.ok()?).ok()
        }
        .await;
        let Ok(mut jwks) = self.jwks.write() else { return };
        match fetched {
            Some(set) => {
                tracing::info!(keys = set.keys.len(), "JWKS fetched");
                *jwks = (set, Some(Instant::now()));
                // A token verified with a key the issuer has since withdrawn proves nothing.
                self.verified.invalidate_all();
            }
            None => {
                tracing::warn!(
                    "the JWKS could not be fetched; tokens with new keys are refused until it can"
                );
                jwks.1 = Some(Instant::now());
            }
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// The credential of `Authorization: Bearer …`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_credential(header(headers, "authorization")?).filter(|credential| !credential.is_empty())
}

/// The credential of a `Bearer …` value (the scheme in any case).
pub fn bearer_credential(value: &str) -> Option<&str> {
    let (scheme, credential) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(credential.trim())
}
