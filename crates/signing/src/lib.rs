//! Signed messages: Ed25519 over the exact body bytes, carried in two AMQP headers.
//!
//! Anyone who can publish to the broker can publish a request or a result, so a client
//! that trusts a runner's public key (and a server that knows a node's public key) can
//! tell a real sender from an impostor. The signature covers the body exactly as
//! published, so any change to it breaks the signature; freshness (ttl) and replay
//! memory are the receiver's business ([`ReplayGuard`]). This crate does file I/O for key
//! files only, never network I/O.
//!
//! Key files (`vogeler-admin keygen`): `NAME.key` holds the base64 of the 32-byte seed on
//! one line, mode 0600 (a group- or world-readable one is refused); `NAME.pub` holds
//! `ed25519 <base64 public key> <key id> <name>`. The key id is the hex of the first
//! 8 bytes of the SHA-256 of the public key: short, stable, and derived, so it cannot lie.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Header carrying the base64 Ed25519 signature of the body.
pub const SIGNATURE_HEADER: &str = "x-vogeler-signature";
/// Header carrying the signer's key id (see [`key_id`]).
pub const KEY_ID_HEADER: &str = "x-vogeler-key-id";
/// The algorithm tag on the first word of a public key file.
pub const ALGORITHM: &str = "ed25519";

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key file could not be written.
    #[error("cannot write key file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's content is not a key.
    #[error("{path}:{line}: {message}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A private key other users can read is no longer private.
    #[error(
        "private key file {path} is readable by group or others (mode {mode:03o}); run chmod 600 on it"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// keygen never replaces a key.
    #[error("{path} already exists; refusing to overwrite a key (choose another --name or --out)")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A key name that would not make a plain file name.
    #[error("bad key name {0:?}: use letters, digits, '.', '_' and '-', not starting with '.'")]
    BadName(String),
    /// The operating system gave no randomness.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// The key id of a public key: hex of the first 8 bytes of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A private signing key (runner, or a client signing its results).
pub struct SecretKey {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for SecretKey {
    /// Never prints the key, only its id.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

impl SecretKey {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<SecretKey, SigningError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| SigningError::Random(e.to_string()))?;
        Ok(SecretKey::from_seed(seed))
    }

    /// The key of a 32-byte seed (tests use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(&key.verifying_key());
        SecretKey { key, id }
    }

    /// Reads a private key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<SecretKey, SigningError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |source| SigningError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SigningError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let bad = |line, message: String| SigningError::Bad {
            path: path.to_path_buf(),
            line,
            message,
        };
        let (line, value) = first_line(&text).ok_or_else(|| bad(1, "empty key file".into()))?;
        if value.starts_with(ALGORITHM) {
            return Err(bad(
                line,
                "this is a public key (.pub); give the private key file (.key)".into(),
            ));
        }
        let bytes = B64
            .decode(value)
            .map_err(|e| bad(line, format!("not base64: {e}")))?;
        let seed: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            bad(
                line,
                format!("a private key is 32 bytes, this is {}", b.len()),
            )
        })?;
        Ok(SecretKey::from_seed(seed))
    }

    /// The key id receivers look the public key up by.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public half, labelled `name` (written into the `.pub` file).
    pub fn public(&self, name: &str) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            id: self.id.clone(),
            label: name.to_string(),
        }
    }

    /// The base64 signature of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        B64.encode(self.key.sign(body).to_bytes())
    }

    /// The two headers to publish `body` with.
    pub fn headers(&self, body: &[u8]) -> Vec<(String, String)> {
        vec![
            (SIGNATURE_HEADER.to_string(), self.sign(body)),
            (KEY_ID_HEADER.to_string(), self.id.clone()),
        ]
    }

    fn file_line(&self) -> String {
        format!("{}\n", B64.encode(self.key.to_bytes()))
    }
}

/// A public key: verifies what its [`SecretKey`] signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: String,
    label: String,
}

impl PublicKey {
    /// Parses a `.pub` file's text (`ed25519 <base64> [<key id> [<name>]]`; blank lines
    /// and `#` comments are skipped). A key id that does not match the key is refused.
    pub fn parse(text: &str, path: &Path) -> Result<PublicKey, SigningError> {
        let bad = |line, message: String| SigningError::Bad {
            path: path.to_path_buf(),
            line,
            message,
        };
        let (line, value) = first_line(text).ok_or_else(|| bad(1, "empty key file".into()))?;
        let mut words = value.split_whitespace();
        match words.next() {
            Some(ALGORITHM) => {}
            Some(other) => {
                return Err(bad(
                    line,
                    format!("expected `{ALGORITHM} <base64 key> <key id> <name>`, found {other:?}"),
                ))
            }
            None => return Err(bad(line, "empty line".into())),
        }
        let b64 = words
            .next()
            .ok_or_else(|| bad(line, "the base64 public key is missing".into()))?;
        let bytes = B64
            .decode(b64)
            .map_err(|e| bad(line, format!("public key is not base64: {e}")))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            bad(
                line,
                format!("an ed25519 public key is 32 bytes, this is {}", b.len()),
            )
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| bad(line, format!("not an ed25519 public key: {e}")))?;
        let id = key_id(&key);
        if let Some(given) = words.next() {
            if given != id {
                return Err(bad(
                    line,
                    format!("key id {given} does not match the key (its id is {id})"),
                ));
            }
        }
        let rest: Vec<&str> = words.collect();
        let label = if rest.is_empty() {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            rest.join(" ")
        };
        Ok(PublicKey { key, id, label })
    }

    /// Reads a `.pub` file.
    pub fn load(path: &Path) -> Result<PublicKey, SigningError> {
        let text = std::fs::read_to_string(path).map_err(|source| SigningError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PublicKey::parse(&text, path)
    }

    /// The `.pub` file line.
    pub fn line(&self) -> String {
        format!(
            "{ALGORITHM} {} {} {}\n",
            B64.encode(self.key.as_bytes()),
            self.id,
            self.label
        )
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The name it was generated with (or its file name), for logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Checks a base64 signature of `body` (strict Ed25519: no malleable signatures).
    pub fn verify(&self, body: &[u8], signature: &str) -> Result<(), Rejection> {
        let bytes = B64
            .decode(signature.trim())
            .map_err(|e| Rejection::BadSignature(format!("signature header is not base64: {e}")))?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|b: Vec<u8>| {
            Rejection::BadSignature(format!("a signature is 64 bytes, this is {}", b.len()))
        })?;
        self.key
            .verify_strict(body, &Signature::from_bytes(&bytes))
            .map_err(|_| {
                Rejection::BadSignature(format!(
                    "signature does not match the message for key {} ({})",
                    self.id, self.label
                ))
            })
    }
}

/// `(line number, text)` of the first line that is neither blank nor a `#` comment.
fn first_line(text: &str) -> Option<(usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .find(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// `vogeler-admin keygen`: writes `DIR/NAME.key` (0600) and `DIR/NAME.pub`, never
/// replacing an existing file. Returns both paths and the public key.
pub fn keygen(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf, PublicKey), SigningError> {
    let ok_name = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok_name {
        return Err(SigningError::BadName(name.to_string()));
    }
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(SigningError::Exists { path: p.clone() });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| SigningError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let secret = SecretKey::generate()?;
    let public = secret.public(name);
    write_new(&secret_path, secret.file_line().as_bytes(), 0o600)?;
    write_new(&public_path, public.line().as_bytes(), 0o644)?;
    Ok((secret_path, public_path, public))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SigningError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| SigningError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                SigningError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                err(e)
            }
        })?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Why a signed (or unsigned) message was refused; [`Rejection::reason`] is the short
/// code logged and put in the error result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No signature where one is required.
    #[error("unsigned: {0}")]
    Unsigned(String),
    /// Signed with a key not among the trusted ones.
    #[error("unknown key: {0}")]
    UnknownKey(String),
    /// The signature does not verify (forged or altered), or is malformed.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// Past its ttl, or without an id and ttl a signature can be bound to.
    #[error("expired: {0}")]
    Expired(String),
    /// Seen before within its ttl.
    #[error("replayed request: {0}")]
    Replayed(String),
    /// This node is not among the request's targets (a copy republished to another
    /// node's queue).
    #[error("not a target: {0}")]
    NotTarget(String),
}

impl Rejection {
    /// Short stable code for logs and headers.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Unsigned(_) => "unsigned",
            Rejection::UnknownKey(_) => "unknown-key",
            Rejection::BadSignature(_) => "bad-signature",
            Rejection::Expired(_) => "expired",
            Rejection::Replayed(_) => "replayed",
            Rejection::NotTarget(_) => "not-target",
        }
    }
}

/// The public keys a client trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    by_id: HashMap<String, PublicKey>,
}

impl Keyring {
    /// A keyring of these keys.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Keyring {
        Keyring {
            by_id: keys.into_iter().map(|k| (k.id.clone(), k)).collect(),
        }
    }

    /// Reads every path: a directory contributes each `*.pub` file in it, a file itself.
    pub fn load(paths: &[PathBuf]) -> Result<Keyring, SigningError> {
        let mut keys = Vec::new();
        for p in paths {
            if p.is_dir() {
                keys.extend(load_dir(p)?.into_iter().map(|(_, k)| k));
            } else {
                keys.push(PublicKey::load(p)?);
            }
        }
        Ok(Keyring::new(keys))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there is no key at all.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Verifies a body against its two header values. `Ok(None)`: unsigned (neither
    /// header); `Ok(Some(key))`: signed by that trusted key.
    pub fn verify(
        &self,
        body: &[u8],
        signature: Option<&str>,
        key_id: Option<&str>,
    ) -> Result<Option<&PublicKey>, Rejection> {
        let (signature, key_id) = match (signature, key_id) {
            (None, None) => return Ok(None),
            (Some(s), Some(k)) => (s, k),
            (Some(_), None) => {
                return Err(Rejection::BadSignature(format!(
                    "signature without a {KEY_ID_HEADER} header"
                )))
            }
            (None, Some(_)) => {
                return Err(Rejection::BadSignature(format!(
                    "{KEY_ID_HEADER} without a {SIGNATURE_HEADER} header"
                )))
            }
        };
        let key = self.by_id.get(key_id.trim()).ok_or_else(|| {
            Rejection::UnknownKey(format!("key id {key_id:?} is not among the trusted keys"))
        })?;
        key.verify(body, signature)?;
        Ok(Some(key))
    }
}

/// Every `*.pub` file of a directory, by file stem (the server's `node_keys`: `<node>.pub`).
pub fn load_dir(dir: &Path) -> Result<Vec<(String, PublicKey)>, SigningError> {
    let read = |source| SigningError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pub") || !path.is_file() {
            continue;
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((stem, PublicKey::load(&path)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Remembers `(key id, request id)` until the request expires, so a copy published
/// again within its ttl is refused. Memory is bounded: expired entries are pruned on
/// every check, and when `capacity` live entries are held new ones are refused
/// (failing closed) rather than forgetting one that could then be replayed.
///
/// [`ReplayGuard::open`] keeps the ids on disk as well, so a client restarted within a
/// request's ttl still refuses its replay: each accepted id is appended to the file and
/// fsynced before the request runs; the file is rewritten (atomically: a temporary
/// file, fsync, rename, fsync of the directory) without the expired entries when it is
/// opened and whenever it has grown to twice the live entries. A line torn by a crash
/// is skipped on load. A guard that cannot write its file refuses requests.
#[derive(Debug)]
pub struct ReplayGuard {
    seen: HashMap<(String, String), DateTime<Utc>>,
    capacity: usize,
    file: Option<ReplayFile>,
}

/// The on-disk half of a [`ReplayGuard`]: the file and the append handle.
#[derive(Debug)]
struct ReplayFile {
    path: PathBuf,
    log: std::fs::File,
    /// Lines appended since the file was last rewritten.
    appended: usize,
}

/// Fewest appended lines before the file is rewritten without expired entries.
const COMPACT_AFTER: usize = 1024;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<String> {
    if text.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    String::from_utf8(bytes?).ok()
}

/// One line of the replay file: `<expiry, unix seconds> <hex key id> <hex request id>`
/// (hex, so no id can break the line format).
fn replay_line(key_id: &str, request_id: &str, until: DateTime<Utc>) -> String {
    format!(
        "{} {} {}\n",
        until.timestamp(),
        hex(key_id.as_bytes()),
        hex(request_id.as_bytes())
    )
}

fn parse_replay_line(line: &str) -> Option<((String, String), DateTime<Utc>)> {
    let mut words = line.split(' ');
    let until = DateTime::from_timestamp(words.next()?.parse().ok()?, 0)?;
    let key = unhex(words.next()?)?;
    let id = unhex(words.next()?)?;
    if words.next().is_some() {
        return None;
    }
    Some(((key, id), until))
}

impl ReplayGuard {
    /// A guard holding at most `capacity` live ids, in memory only.
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard {
            seen: HashMap::new(),
            capacity: capacity.max(1),
            file: None,
        }
    }

    /// A guard kept in `path` (created with its directory when missing, mode 0600):
    /// loads the ids still live at `now` and rewrites the file with only those.
    pub fn open(
        path: &Path,
        capacity: usize,
        now: DateTime<Utc>,
    ) -> Result<ReplayGuard, SigningError> {
        let write_err = |source| SigningError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| SigningError::Write {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let mut seen = HashMap::new();
        match std::fs::read(path) {
            Ok(bytes) => {
                for line in String::from_utf8_lossy(&bytes).lines() {
                    if let Some((k, until)) = parse_replay_line(line) {
                        if until >= now {
                            seen.insert(k, until);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SigningError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let log = rewrite(path, &seen).map_err(write_err)?;
        Ok(ReplayGuard {
            seen,
            capacity: capacity.max(1),
            file: Some(ReplayFile {
                path: path.to_path_buf(),
                log,
                appended: 0,
            }),
        })
    }

    /// Records `(key_id, request_id)` valid until `expires`; refuses it when already
    /// seen, when the memory is full, or when the file cannot be written.
    pub fn check(
        &mut self,
        key_id: &str,
        request_id: &str,
        expires: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        self.seen.retain(|_, until| *until >= now);
        let k = (key_id.to_string(), request_id.to_string());
        if self.seen.contains_key(&k) {
            return Err(Rejection::Replayed(format!(
                "request {request_id} signed by key {key_id} was already received"
            )));
        }
        if self.seen.len() >= self.capacity {
            return Err(Rejection::Replayed(format!(
                "replay memory full ({} requests within their ttl); request {request_id} refused",
                self.capacity
            )));
        }
        if let Some(f) = &mut self.file {
            let line = replay_line(key_id, request_id, expires);
            let written = f
                .log
                .write_all(line.as_bytes())
                .and_then(|()| f.log.sync_data());
            if let Err(e) = written {
                return Err(Rejection::Replayed(format!(
                    "the replay memory {} cannot be written ({e}); request {request_id} refused rather than risk running it twice",
                    f.path.display()
                )));
            }
            f.appended += 1;
        }
        self.seen.insert(k, expires);
        let live = self.seen.len();
        if let Some(f) = &mut self.file {
            if f.appended >= COMPACT_AFTER.max(2 * live) {
                // The append above is already durable; a failed rewrite keeps the
                // longer file, which is still correct.
                if let Ok(log) = rewrite(&f.path, &self.seen) {
                    f.log = log;
                    f.appended = 0;
                }
            }
        }
        Ok(())
    }

    /// Live entries held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The file it is kept in, when it is kept on disk.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }
}

/// Writes `seen` to `path` atomically (temporary file, fsync, rename, fsync of the
/// directory) and returns the file opened for appending.
fn rewrite(
    path: &Path,
    seen: &HashMap<(String, String), DateTime<Utc>>,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp_name = path.as_os_str().to_os_string();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut text = String::new();
        for ((key, id), until) in seen {
            text.push_str(&replay_line(key, id, *until));
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    std::fs::OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    #[test]
    fn sign_verify_and_tamper() {
        let k = key(1);
        let ring = Keyring::new([k.public("runner")]);
        let body = br#"{"v":1,"kind":"request"}"#;
        let sig = k.sign(body);
        let got = ring
            .verify(body, Some(&sig), Some(k.id()))
            .expect("verifies")
            .expect("signed");
        assert_eq!(got.label(), "runner");
        // One byte changed: refused.
        let mut altered = body.to_vec();
        altered[5] = b'2';
        let e = ring
            .verify(&altered, Some(&sig), Some(k.id()))
            .expect_err("altered");
        assert_eq!(e.reason(), "bad-signature");
        // Signed by another key claiming the trusted id: forged.
        let forged = key(2).sign(body);
        let e = ring
            .verify(body, Some(&forged), Some(k.id()))
            .expect_err("forged");
        assert_eq!(e.reason(), "bad-signature");
        // Another key's own id: unknown.
        let e = ring
            .verify(body, Some(&forged), Some(key(2).id()))
            .expect_err("unknown");
        assert_eq!(e.reason(), "unknown-key");
        // Garbage and half headers.
        for (s, i) in [
            (Some("!!"), Some(k.id())),
            (Some("AAAA"), Some(k.id())),
            (Some(sig.as_str()), None),
            (None, Some(k.id())),
        ] {
            assert_eq!(
                ring.verify(body, s, i).expect_err("bad").reason(),
                "bad-signature"
            );
        }
        assert_eq!(ring.verify(body, None, None), Ok(None));
    }

    #[test]
    fn key_ids_are_stable_and_short() {
        let k = key(7);
        assert_eq!(k.id().len(), 16);
        assert_eq!(k.id(), key(7).id());
        assert_ne!(k.id(), key(8).id());
        assert!(!format!("{k:?}").contains(&B64.encode([7u8; 32])));
    }

    #[test]
    fn keygen_writes_private_0600_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (secret, public, pk) = keygen(dir.path(), "runner").expect("keygen");
        let mode = std::fs::metadata(&secret)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let sk = SecretKey::load(&secret).expect("load secret");
        let loaded = PublicKey::load(&public).expect("load public");
        assert_eq!(loaded, pk);
        assert_eq!(sk.id(), loaded.id());
        assert_eq!(loaded.label(), "runner");
        let body = b"hello";
        loaded.verify(body, &sk.sign(body)).expect("pair matches");
        let e = keygen(dir.path(), "runner").expect_err("exists");
        assert!(matches!(e, SigningError::Exists { .. }), "{e}");
        assert!(matches!(
            keygen(dir.path(), "../x"),
            Err(SigningError::BadName(_))
        ));
        // A readable private key is refused, naming the file and the fix.
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = SecretKey::load(&secret).expect_err("exposed").to_string();
        assert!(e.contains("runner.key") && e.contains("chmod 600"), "{e}");
        // The key ring reads a directory of .pub files.
        let ring = Keyring::load(&[dir.path().to_path_buf()]).expect("ring");
        assert_eq!(ring.len(), 1);
    }

    #[test]
    fn bad_public_key_files_name_file_and_line() {
        let p = Path::new("/etc/vogeler/keys/x.pub");
        let good = key(3).public("x").line();
        let mismatched = good.replace(key(3).id(), "0000000000000000");
        for (text, want) in [
            ("", "empty"),
            ("# only a comment\n", "empty"),
            ("rsa AAAA\n", "rsa"),
            ("ed25519\n", "missing"),
            ("ed25519 !!!\n", "base64"),
            ("ed25519 AAAA\n", "32 bytes"),
            (mismatched.as_str(), "does not match"),
        ] {
            let e = PublicKey::parse(text, p).expect_err(text).to_string();
            assert!(e.contains("x.pub") && e.contains(want), "{text:?}: {e}");
        }
        let parsed = PublicKey::parse(&format!("# comment\n\n{good}"), p).expect("good");
        assert_eq!(parsed.id(), key(3).id());
        let bare = format!("ed25519 {}\n", B64.encode(key(3).public("").key.as_bytes()));
        assert_eq!(PublicKey::parse(&bare, p).expect("bare").label(), "x");
    }

    #[test]
    fn replay_guard_remembers_until_expiry_and_is_bounded() {
        let t0 = Utc::now();
        let later = |s| t0 + chrono::Duration::seconds(s);
        let mut g = ReplayGuard::new(2);
        g.check("k", "r1", later(10), t0).expect("first");
        assert_eq!(
            g.check("k", "r1", later(10), later(5))
                .expect_err("replay")
                .reason(),
            "replayed"
        );
        // Same request id under another key is another request.
        g.check("k2", "r1", later(10), t0).expect("other key");
        // Full: refused rather than forgetting.
        assert!(g.check("k", "r2", later(10), later(1)).is_err());
        // After expiry the entries are pruned and room is made.
        g.check("k", "r3", later(30), later(11)).expect("pruned");
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn replay_guard_on_disk_survives_a_restart_and_forgets_expired_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/replay");
        let t0 = DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default();
        let later = |s| t0 + chrono::Duration::seconds(s);
        {
            let mut g = ReplayGuard::open(&path, 10, t0).expect("open");
            g.check("k", "r1", later(10), t0).expect("first");
            // An id that would break a line format is stored safely.
            g.check("k", "r 2\nx", later(100), t0).expect("odd id");
        }
        // A crash tore the last line: it is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"17900"))
            .expect("torn line");
        let mut g = ReplayGuard::open(&path, 10, later(5)).expect("reopen");
        assert_eq!(g.len(), 2);
        let e = g.check("k", "r1", later(10), later(5)).expect_err("replay");
        assert_eq!(e.reason(), "replayed");
        assert!(g.check("k", "r 2\nx", later(100), later(5)).is_err());
        drop(g);
        // Past r1's ttl it is forgotten (and pruned from the file), r2 is not.
        let mut g = ReplayGuard::open(&path, 10, later(11)).expect("reopen");
        assert_eq!(g.len(), 1);
        g.check("k", "r1", later(40), later(11))
            .expect("expired id is new again");
        let text = std::fs::read_to_string(&path).expect("file");
        assert_eq!(text.lines().count(), 2, "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_replay_file_that_cannot_be_opened_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").expect("file");
        let e = ReplayGuard::open(&blocker.join("replay"), 10, Utc::now()).expect_err("not a dir");
        assert!(e.to_string().contains("file"), "{e}");
    }
}
