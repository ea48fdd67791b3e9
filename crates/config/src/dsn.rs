//! Broker URIs and store DSNs: parsed once, passwords masked whenever shown.

use std::fmt;
use std::path::{Path, PathBuf};

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Why a DSN was refused; the message shows a correct example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    /// A broker URI that does not parse.
    #[error(
        "bad broker URI {given:?}: {why} (example: amqp://guest:guest@127.0.0.1:5672/vogeler)"
    )]
    Amqp {
        /// The URI, password masked.
        given: String,
        /// What is wrong.
        why: String,
    },
    /// A NATS URL that does not parse.
    #[error("bad NATS URL {given:?}: {why} (example: nats://vogeler:PASSWORD@127.0.0.1:4222,10.0.0.2:4222/vogeler)")]
    Nats {
        /// The URL, password masked.
        given: String,
        /// What is wrong.
        why: String,
    },
    /// A store DSN whose scheme is unknown or whose parts do not parse.
    #[error("bad store DSN {given:?}: {why}; examples: sqlite:///var/lib/vogeler/vogeler.db, sqlite:relative.db, postgres://vogeler:secret@127.0.0.1:5432/vogeler, couch://127.0.0.1:5984/system_records (couchs:// for TLS)")]
    Store {
        /// The DSN, password masked.
        given: String,
        /// What is wrong.
        why: String,
    },
}

/// Characters kept as they are in an encoded vhost or credential.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `user:pass@host…` as the part before the last `@` (if any) and the rest.
fn split_userinfo(authority: &str) -> (Option<&str>, &str) {
    match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    }
}

/// One percent-encoded URL part (`what` names it in the error).
fn decode_part(part: &str, what: &str) -> Result<String, String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("{what} is not valid percent-encoded UTF-8"))
}

/// An AMQP 0-9-1 broker address per the RabbitMQ URI spec.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpDsn {
    /// `amqps://`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// TCP port (5672, or 5671 for TLS, unless given).
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password (never shown: see `Display`).
    pub password: String,
    /// Virtual host, decoded: `/` for an empty path.
    pub vhost: String,
}

impl AmqpDsn {
    /// Parses `amqp://user:pass@host:port/vhost` or a bare `host[:port]`.
    pub fn parse(s: &str) -> Result<AmqpDsn, DsnError> {
        let s = s.trim();
        let err = |why: &str| DsnError::Amqp {
            given: mask_secrets(s),
            why: why.to_string(),
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        let (tls, rest) = if let Some(r) = s.strip_prefix("amqps://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("amqp://") {
            (false, r)
        } else if s.contains("://") {
            return Err(err("the scheme must be amqp:// or amqps://"));
        } else {
            // A bare host, as the 2010 README's `--qhost 10.10.10.2`.
            (false, s)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (userinfo, hostport) = split_userinfo(authority);
        let decode = |part: &str, what: &str| decode_part(part, what).map_err(|why| err(&why));
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (decode(user, "user")?, decode(pass, "password")?),
                None => (decode(u, "user")?, String::new()),
            },
            None => ("guest".to_string(), "guest".to_string()),
        };
        let default_port = if tls { 5671 } else { 5672 };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| err("unclosed [ in IPv6 host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p
                    .parse()
                    .map_err(|_| err(&format!("port {p:?} is not a number")))?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .map_err(|_| err(&format!("port {p:?} is not a number from 1 to 65535")))?,
                ),
                None => (hostport.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(err("no host"));
        }
        let vhost = match path {
            None | Some("") => "/".to_string(),
            Some(p) => decode(p, "vhost")?,
        };
        Ok(AmqpDsn {
            tls,
            host,
            port,
            user,
            password,
            vhost,
        })
    }

    /// Several brokers of one cluster, comma-separated.
    pub fn parse_list(s: &str) -> Result<Vec<AmqpDsn>, DsnError> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(AmqpDsn::parse)
            .collect::<Result<Vec<_>, _>>()
            .and_then(|v| {
                if v.is_empty() {
                    Err(DsnError::Amqp {
                        given: s.into(),
                        why: "no broker address".into(),
                    })
                } else {
                    Ok(v)
                }
            })
    }

    /// The full URI with the password, for the AMQP client only.
    pub fn to_uri(&self) -> String {
        self.render(&utf8_percent_encode(&self.password, COMPONENT).to_string())
    }

    fn render(&self, password: &str) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{}://{}:{}@{}:{}/{}",
            if self.tls { "amqps" } else { "amqp" },
            utf8_percent_encode(&self.user, COMPONENT),
            password,
            host,
            self.port,
            utf8_percent_encode(&self.vhost, COMPONENT)
        )
    }
}

impl fmt::Display for AmqpDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render("****"))
    }
}

impl fmt::Debug for AmqpDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpDsn({self})")
    }
}

/// A NATS server (or cluster) address: `nats://[user:password@|token@]host[:port][,host2[:port]…][/PREFIX]`,
/// or `tls://…` for TLS. The prefix namespaces every subject and stream, the way the
/// vhost does on RabbitMQ.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsDsn {
    /// `tls://`.
    pub tls: bool,
    /// `host:port` of every seed server (port 4222 unless given).
    pub servers: Vec<(String, u16)>,
    /// User name, for a user/password login.
    pub user: Option<String>,
    /// Password, or the token when there is no user (never shown: see `Display`).
    pub password: Option<String>,
    /// Subject and stream prefix (`vogeler` unless given).
    pub prefix: String,
}

/// The prefix NATS subjects and streams get unless the URL names one.
pub const DEFAULT_NATS_PREFIX: &str = "vogeler";

impl NatsDsn {
    /// Whether `s` names a NATS server (its scheme is `nats://` or `tls://`).
    pub fn is_nats(s: &str) -> bool {
        let s = s.trim_start();
        s.starts_with("nats://") || s.starts_with("tls://")
    }

    /// Parses `nats://[user:pass@]host[:port][,host[:port]…][/PREFIX]`.
    pub fn parse(s: &str) -> Result<NatsDsn, DsnError> {
        let s = s.trim();
        let err = |why: String| DsnError::Nats {
            given: mask_secrets(s),
            why,
        };
        let (tls, rest) = if let Some(r) = s.strip_prefix("tls://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("nats://") {
            (false, r)
        } else {
            return Err(err("the scheme must be nats:// or tls://".into()));
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let prefix = if prefix.is_empty() {
            DEFAULT_NATS_PREFIX.to_string()
        } else {
            prefix.to_string()
        };
        let prefix_ok = prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !prefix_ok {
            return Err(err(format!(
                "prefix {prefix:?}: use dot-separated tokens of A-Z a-z 0-9 - _"
            )));
        }
        let (userinfo, hosts) = split_userinfo(authority);
        let decode = |part: &str, what: &str| decode_part(part, what).map_err(err);
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => {
                    (Some(decode(user, "user")?), Some(decode(pass, "password")?))
                }
                None => (None, Some(decode(u, "token")?)),
            },
            None => (None, None),
        };
        let mut servers = Vec::new();
        for part in hosts.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let part = part
                .strip_prefix("nats://")
                .or_else(|| part.strip_prefix("tls://"))
                .unwrap_or(part);
            let (host, port) = match part.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(':') => (
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                        err(format!("port {p:?} is not a number from 1 to 65535"))
                    })?,
                ),
                _ => (part.to_string(), 4222),
            };
            if host.is_empty() {
                return Err(err("a server without a host".into()));
            }
            servers.push((host, port));
        }
        if servers.is_empty() {
            return Err(err("no server address".into()));
        }
        Ok(NatsDsn {
            tls,
            servers,
            user,
            password,
            prefix,
        })
    }

    /// The servers as the NATS client takes them (`nats://h:p,nats://h2:p`), no credentials.
    pub fn server_list(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        self.servers
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("{scheme}://[{h}]:{p}")
                } else {
                    format!("{scheme}://{h}:{p}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for NatsDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        let hosts = self
            .servers
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let login = match (&self.user, &self.password) {
            (Some(u), _) => format!("{}:****@", utf8_percent_encode(u, COMPONENT)),
            (None, Some(_)) => "****@".to_string(),
            (None, None) => String::new(),
        };
        write!(f, "{scheme}://{login}{hosts}/{}", self.prefix)
    }
}

impl fmt::Debug for NatsDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NatsDsn({self})")
    }
}

/// Where records are stored, by scheme.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreDsn {
    /// Embedded SQLite file.
    Sqlite {
        /// Absolute path of the database file.
        path: PathBuf,
    },
    /// PostgreSQL, passed to the driver as given.
    Postgres {
        /// `postgres://…` URL.
        url: String,
    },
    /// CouchDB over its HTTP API.
    Couch {
        /// `http(s)://host:port`.
        base_url: String,
        /// Database name (`system_records` by default).
        db: String,
        /// User, if any.
        user: Option<String>,
        /// Password, if any (never shown).
        password: Option<String>,
        /// `couchs://`.
        tls: bool,
        /// CA certificate(s) (PEM) that sign the server's certificate, from `?ca_file=PATH`
        /// or `[couch] ca_file`: a private CA need not be installed system-wide.
        ca_file: Option<PathBuf>,
    },
}

impl StoreDsn {
    /// Parses a DSN; a relative SQLite path is relative to `base_dir` (the config file's directory).
    pub fn parse(s: &str, base_dir: &Path) -> Result<StoreDsn, DsnError> {
        let s = s.trim();
        let err = |why: String| DsnError::Store {
            given: mask_secrets(s),
            why,
        };
        if let Some(rest) = s.strip_prefix("sqlite:") {
            let path = if let Some(abs) = rest.strip_prefix("//") {
                // sqlite:///abs/path (empty authority) or sqlite://rel.db
                if abs.starts_with('/') {
                    PathBuf::from(abs)
                } else {
                    base_dir.join(abs)
                }
            } else if rest.starts_with('/') {
                PathBuf::from(rest)
            } else {
                base_dir.join(rest)
            };
            if rest.trim_start_matches('/').is_empty() {
                return Err(err("no database file".into()));
            }
            return Ok(StoreDsn::Sqlite { path });
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            // Refuse a bad sslmode here, where the error can name the setting.
            postgres_tls(s)?;
            return Ok(StoreDsn::Postgres { url: s.to_string() });
        }
        let couch = s
            .strip_prefix("couchs://")
            .map(|r| (true, r))
            .or_else(|| s.strip_prefix("couch://").map(|r| (false, r)));
        if let Some((tls, rest)) = couch {
            let (rest, query) = match rest.split_once('?') {
                Some((r, q)) => (r, Some(q)),
                None => (rest, None),
            };
            let mut ca_file = None;
            for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("ca_file", v)) if !v.is_empty() => {
                        let v = percent_decode_str(v).decode_utf8().map_err(|_| {
                            err("ca_file is not valid percent-encoded UTF-8".into())
                        })?;
                        let p = PathBuf::from(v.as_ref());
                        ca_file = Some(if p.is_absolute() { p } else { base_dir.join(p) });
                    }
                    _ => {
                        return Err(err(format!(
                            "unknown parameter {pair:?}: the only one is ca_file=PATH"
                        )))
                    }
                }
            }
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i + 1..].trim_end_matches('/')),
                None => (rest, ""),
            };
            let (userinfo, hostport) = match authority.rfind('@') {
                Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
                None => (None, authority),
            };
            if hostport.is_empty() {
                return Err(err("no host".into()));
            }
            let dec = |p: &str| {
                percent_decode_str(p)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| err("credentials are not valid percent-encoded UTF-8".into()))
            };
            let (user, password) = match userinfo {
                Some(u) => match u.split_once(':') {
                    Some((a, b)) => (Some(dec(a)?), Some(dec(b)?)),
                    None => (Some(dec(u)?), None),
                },
                None => (None, None),
            };
            let hostport = if hostport.contains(':') || hostport.starts_with('[') {
                hostport.to_string()
            } else {
                format!("{hostport}:5984")
            };
            let db = if path.is_empty() {
                "system_records".to_string()
            } else {
                path.to_string()
            };
            return Ok(StoreDsn::Couch {
                base_url: format!("{}://{hostport}", if tls { "https" } else { "http" }),
                db,
                user,
                password,
                tls,
                ca_file,
            });
        }
        let scheme = s.split_once(':').map(|(a, _)| a).unwrap_or(s);
        Err(err(format!("unknown scheme {scheme:?}")))
    }

    /// The scheme name: `sqlite`, `postgres` or `couch`.
    pub fn scheme(&self) -> &'static str {
        match self {
            StoreDsn::Sqlite { .. } => "sqlite",
            StoreDsn::Postgres { .. } => "postgres",
            StoreDsn::Couch { .. } => "couch",
        }
    }
}

impl fmt::Display for StoreDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreDsn::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
            StoreDsn::Postgres { url } => f.write_str(&mask_secrets(url)),
            StoreDsn::Couch {
                base_url,
                db,
                user,
                password,
                tls,
                ca_file,
            } => {
                let host = base_url
                    .split_once("://")
                    .map(|(_, h)| h)
                    .unwrap_or(base_url);
                let creds = match (user, password) {
                    (Some(u), Some(_)) => format!("{u}:****@"),
                    (Some(u), None) => format!("{u}@"),
                    _ => String::new(),
                };
                write!(
                    f,
                    "{}://{creds}{host}/{db}",
                    if *tls { "couchs" } else { "couch" }
                )?;
                match ca_file {
                    Some(ca) => write!(f, "?ca_file={}", ca.display()),
                    None => Ok(()),
                }
            }
        }
    }
}

impl fmt::Debug for StoreDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreDsn({self})")
    }
}

/// PostgreSQL's `sslmode`, with libpq's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    /// Plain TCP (the default here when `sslmode` is absent, unlike libpq's `prefer`).
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked.
    Prefer,
    /// TLS or fail; the certificate is checked against `sslrootcert` when given (as libpq).
    Require,
    /// TLS, the certificate chain checked against `sslrootcert` (or the system roots).
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

/// The TLS part of a `postgres://` DSN: `sslmode` and `sslrootcert` query parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    /// What TLS is required and checked.
    pub mode: PgSslMode,
    /// CA certificate(s) (PEM) to check the server against.
    pub root_cert: Option<PathBuf>,
}

/// Splits `sslmode` and `sslrootcert` off a `postgres://` URL: the driver gets the rest,
/// the store builds its TLS connector from [`PgTls`]. Because the driver knows only
/// disable/prefer/require and no root certificate, these two are ours to interpret.
pub fn postgres_tls(url: &str) -> Result<(String, PgTls), DsnError> {
    let err = |why: String| DsnError::Store {
        given: mask_secrets(url),
        why,
    };
    let mut tls = PgTls {
        mode: PgSslMode::Disable,
        root_cert: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), tls));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || {
            percent_decode_str(v)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| err(format!("{k} is not valid percent-encoded UTF-8")))
        };
        match k {
            "sslmode" => {
                tls.mode = match value()?.as_str() {
                    "disable" => PgSslMode::Disable,
                    "prefer" | "allow" => PgSslMode::Prefer,
                    "require" => PgSslMode::Require,
                    "verify-ca" => PgSslMode::VerifyCa,
                    "verify-full" => PgSslMode::VerifyFull,
                    other => {
                        return Err(err(format!(
                            "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                        )))
                    }
                }
            }
            "sslrootcert" => {
                let v = value()?;
                if v.is_empty() {
                    return Err(err("sslrootcert is empty".into()));
                }
                tls.root_cert = Some(PathBuf::from(v));
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

/// Masks the password of every `scheme://user:password@` in `text`, for logs and errors.
pub fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', whitespace or quote.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'' || c == ',')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":****");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_urls_parse_with_servers_credentials_and_prefix() {
        let d =
            NatsDsn::parse("nats://u:p%40ss@a.example:4223,b.example/site.one").expect("parses");
        assert!(!d.tls);
        assert_eq!(
            d.servers,
            vec![
                ("a.example".to_string(), 4223),
                ("b.example".to_string(), 4222)
            ]
        );
        assert_eq!(
            (d.user.as_deref(), d.password.as_deref()),
            (Some("u"), Some("p@ss"))
        );
        assert_eq!(d.prefix, "site.one");
        assert_eq!(
            d.server_list(),
            "nats://a.example:4223,nats://b.example:4222"
        );
        assert_eq!(
            d.to_string(),
            "nats://u:****@a.example:4223,b.example:4222/site.one"
        );
        let t = NatsDsn::parse("tls://tok@h").expect("parses");
        assert!(t.tls);
        assert_eq!(
            (t.user.as_deref(), t.password.as_deref()),
            (None, Some("tok"))
        );
        assert_eq!(t.prefix, DEFAULT_NATS_PREFIX);
        assert_eq!(t.to_string(), "tls://****@h:4222/vogeler");
        assert!(NatsDsn::is_nats(" nats://h") && !NatsDsn::is_nats("amqp://h"));
        for bad in [
            "nats://",
            "nats://h:0",
            "nats://h:x",
            "nats://h/bad prefix",
            "nats://h/a..b",
            "amqp://h",
        ] {
            let e = NatsDsn::parse(bad).expect_err("refused").to_string();
            assert!(e.contains("bad NATS URL"), "{bad}: {e}");
        }
        assert!(
            !format!("{:?}", NatsDsn::parse("nats://u:secret@h").expect("parses"))
                .contains("secret")
        );
        let e = NatsDsn::parse("nats://u:secret@h:x")
            .expect_err("refused")
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn amqp_forms() {
        let cases: &[(&str, &str, u16, &str, &str, &str, bool)] = &[
            (
                "amqp://guest:guest@127.0.0.1:5672/vogeler",
                "127.0.0.1",
                5672,
                "guest",
                "guest",
                "vogeler",
                false,
            ),
            (
                "amqp://guest:guest@127.0.0.1:5672/%2Fvogeler",
                "127.0.0.1",
                5672,
                "guest",
                "guest",
                "/vogeler",
                false,
            ),
            ("amqp://u:p@h/", "h", 5672, "u", "p", "/", false),
            ("amqp://u:p@h", "h", 5672, "u", "p", "/", false),
            (
                "amqp://u:p%40ss@h:5673/v",
                "h",
                5673,
                "u",
                "p@ss",
                "v",
                false,
            ),
            ("amqps://u:p@h/v", "h", 5671, "u", "p", "v", true),
            (
                "10.10.10.2",
                "10.10.10.2",
                5672,
                "guest",
                "guest",
                "/",
                false,
            ),
            ("broker:5673", "broker", 5673, "guest", "guest", "/", false),
            (
                "amqp://[::1]:5672/",
                "::1",
                5672,
                "guest",
                "guest",
                "/",
                false,
            ),
        ];
        for (s, host, port, user, pass, vhost, tls) in cases {
            let d = AmqpDsn::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                (
                    d.host.as_str(),
                    d.port,
                    d.user.as_str(),
                    d.password.as_str(),
                    d.vhost.as_str(),
                    d.tls
                ),
                (*host, *port, *user, *pass, *vhost, *tls),
                "{s}"
            );
            // The URI for the client round-trips.
            assert_eq!(AmqpDsn::parse(&d.to_uri()).expect("round trip"), d, "{s}");
            assert!(
                !d.to_string().contains(&format!(":{pass}@")) || pass.is_empty() || *pass == "****"
            );
        }
        assert_eq!(
            AmqpDsn::parse("amqp://u:p@h/").expect("dsn").to_uri(),
            "amqp://u:p@h:5672/%2F"
        );
        for bad in ["", "http://h/", "amqp://u:p@h:notaport/", "amqp:///v"] {
            let e = AmqpDsn::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("example"), "{e}");
        }
        assert_eq!(
            AmqpDsn::parse_list("amqp://a, amqp://b:5673")
                .expect("list")
                .len(),
            2
        );
    }

    #[test]
    fn amqp_display_masks_password() {
        let d = AmqpDsn::parse("amqp://guest:s3cret@h/v").expect("dsn");
        assert_eq!(d.to_string(), "amqp://guest:****@h:5672/v");
        assert!(!format!("{d:?}").contains("s3cret"));
    }

    #[test]
    fn store_forms() {
        let base = Path::new("/etc/vogeler");
        let cases: &[(&str, &str)] = &[
            (
                "sqlite:///var/lib/vogeler/v.db",
                "sqlite:///var/lib/vogeler/v.db",
            ),
            ("sqlite:rel.db", "sqlite:///etc/vogeler/rel.db"),
            ("sqlite://rel.db", "sqlite:///etc/vogeler/rel.db"),
            ("postgres://u:pw@h/db", "postgres://u:****@h/db"),
            ("postgresql://h/db", "postgresql://h/db"),
            (
                "couch://127.0.0.1:5984/system_records",
                "couch://127.0.0.1:5984/system_records",
            ),
            ("couch://localhost", "couch://localhost:5984/system_records"),
            (
                "couch://u:pw@h:5984/sysrecs3",
                "couch://u:****@h:5984/sysrecs3",
            ),
            ("couchs://h:6984/x", "couchs://h:6984/x"),
        ];
        for (s, shown) in cases {
            let d = StoreDsn::parse(s, base).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(d.to_string(), *shown, "{s}");
        }
        match StoreDsn::parse("couchs://u:pw@h:6984/x", base).expect("couchs") {
            StoreDsn::Couch {
                base_url,
                db,
                user,
                password,
                tls,
                ..
            } => {
                assert_eq!(
                    (base_url.as_str(), db.as_str(), tls),
                    ("https://h:6984", "x", true)
                );
                assert_eq!(
                    (user.as_deref(), password.as_deref()),
                    (Some("u"), Some("pw"))
                );
            }
            other => panic!("{other:?}"),
        }
        let e = StoreDsn::parse("mongo://u:pw@h/x", base).expect_err("mongo");
        let msg = e.to_string();
        assert!(
            msg.contains("\"mongo\"")
                && msg.contains("sqlite:")
                && msg.contains("postgres://")
                && msg.contains("couch://"),
            "{msg}"
        );
        assert!(!msg.contains("pw@"), "{msg}");
    }

    #[test]
    fn postgres_tls_parameters() {
        let (rest, tls) = postgres_tls(
            "postgres://u:pw@h/db?connect_timeout=5&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .expect("parse");
        assert_eq!(rest, "postgres://u:pw@h/db?connect_timeout=5");
        assert_eq!(tls.mode, PgSslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let (rest, tls) = postgres_tls("postgres://h/db").expect("plain");
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("postgres://h/db", PgSslMode::Disable)
        );
        for (mode, want) in [
            ("disable", PgSslMode::Disable),
            ("prefer", PgSslMode::Prefer),
            ("require", PgSslMode::Require),
            ("verify-ca", PgSslMode::VerifyCa),
        ] {
            let (rest, tls) = postgres_tls(&format!("postgres://h/db?sslmode={mode}")).expect(mode);
            assert_eq!((rest.as_str(), tls.mode), ("postgres://h/db", want));
        }
        let e = StoreDsn::parse("postgres://u:pw@h/db?sslmode=always", Path::new("/"))
            .expect_err("bad mode")
            .to_string();
        assert!(e.contains("\"always\"") && e.contains("verify-full"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
    }

    #[test]
    fn couch_ca_file() {
        let d = StoreDsn::parse(
            "couchs://h:6984/x?ca_file=certs/ca.pem",
            Path::new("/etc/v"),
        )
        .expect("couchs");
        assert_eq!(
            d.to_string(),
            "couchs://h:6984/x?ca_file=/etc/v/certs/ca.pem"
        );
        match d {
            StoreDsn::Couch { ca_file, db, .. } => {
                assert_eq!(ca_file, Some(PathBuf::from("/etc/v/certs/ca.pem")));
                assert_eq!(db, "x");
            }
            other => panic!("{other:?}"),
        }
        let e = StoreDsn::parse("couchs://h/x?verify=no", Path::new("/")).expect_err("unknown");
        assert!(e.to_string().contains("ca_file"), "{e}");
    }

    #[test]
    fn masking() {
        assert_eq!(
            mask_secrets("cannot reach amqp://guest:s3cret@h:5672/v: refused"),
            "cannot reach amqp://guest:****@h:5672/v: refused"
        );
        assert_eq!(mask_secrets("a,b amqp://u@h/ x"), "a,b amqp://u@h/ x");
        assert_eq!(
            mask_secrets("amqp://a:1@h,amqp://b:2@i"),
            "amqp://a:****@h,amqp://b:****@i"
        );
    }
}
