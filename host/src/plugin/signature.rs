//! Signatures on components: which plugins an operator allowed to run.
//!
//! A signature is a detached file beside the component, `FILE.wasm.sig`:
//!
//! ```text
//! conclave-signature 1
//! key ed25519:<64 hex digits: the signer's public key>
//! sha256 <64 hex digits: the component's SHA-256>
//! signature <128 hex digits: Ed25519 over "conclave plugin signature 1\0" + the SHA-256>
//! ```
//!
//! Detached, not a custom section inside the component: a section would
//! change the component's bytes, so its SHA-256 (what the journal records
//! and the compilation cache keys on) would no longer be the one that was
//! built and reviewed; and a detached file can be added, replaced (a key
//! rotation) or removed without touching the component.
//!
//! When a team spec (`[team] trusted_keys`) or the server (`--trusted-key`)
//! names trusted keys, every component the team loads, built-ins included,
//! must carry a signature that verifies with one of them; `run`, `serve`,
//! `worker` and hot swap refuse any other. The check happens at load, on
//! the SHA-256 of the bytes that were compiled: never per call.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};

/// What a signature covers: this prefix, then the component's SHA-256.
const CONTEXT: &[u8] = b"conclave plugin signature 1\0";

/// The first line of a signature file.
const HEADER: &str = "conclave-signature 1";

/// The first word of a secret key file.
const SECRET_HEADER: &str = "conclave-secret-key";

/// Where a component's signature is: `FILE.sig` beside it.
pub fn sig_path(component: &Path) -> PathBuf {
    let mut s = component.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A public key a plugin may be signed with: `ed25519:<64 hex digits>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses `ed25519:<hex>`, or says what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let Some(hex) = s.strip_prefix("ed25519:") else {
            return Err(format!(
                "{:?} is not a public key: keys are written `ed25519:` and 64 hex digits (the `.pub` file `conclave plugins keygen` writes)",
                s.chars().take(80).collect::<String>()
            ));
        };
        let bytes = unhex::<32>(hex)
            .ok_or_else(|| format!("{s:?}: an Ed25519 public key is 64 hex digits"))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| format!("{s:?} is not a valid Ed25519 public key: {e}"))
    }

    /// A key given on a command line: the key itself, or a file holding it.
    pub fn from_arg(s: &str) -> Result<Self, String> {
        if s.trim().starts_with("ed25519:") {
            return Self::parse(s);
        }
        let text = std::fs::read_to_string(s)
            .map_err(|e| format!("{s}: cannot read the public key file: {e}"))?;
        Self::parse(&text).map_err(|e| format!("{s}: {e}"))
    }

    /// The first 16 hex digits, for messages.
    pub fn short(&self) -> String {
        let full = self.to_string();
        full[..full.len().min(8 + 16)].to_string()
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ed25519:{}", hex(self.0.as_bytes()))
    }
}

/// A signing key, as `conclave plugins keygen` writes it.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<Self, String> {
        let mut seed = [0u8; 32];
        use rand::TryRngCore;
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|e| format!("no randomness for a key: {e}"))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// The key file's text: `conclave-secret-key ed25519:<hex>`.
    pub fn to_file_text(&self) -> String {
        format!(
            "{SECRET_HEADER} ed25519:{}\n",
            hex(self.0.to_bytes().as_slice())
        )
    }

    /// Reads a key file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .trim()
            .strip_prefix(SECRET_HEADER)
            .map(str::trim)
            .and_then(|r| r.strip_prefix("ed25519:"))
            .ok_or("not a secret key file of `conclave plugins keygen`")?;
        let bytes = unhex::<32>(rest).ok_or("the key is not 64 hex digits")?;
        Ok(SecretKey(SigningKey::from_bytes(&bytes)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The signature file's text for a component whose SHA-256 is
    /// `sha256` (hex).
    pub fn sign(&self, sha256: &str) -> Result<String, String> {
        let digest = unhex::<32>(sha256).ok_or("not a SHA-256 in hex")?;
        let signature = self.0.sign(&[CONTEXT, &digest].concat());
        Ok(format!(
            "{HEADER}\nkey {}\nsha256 {sha256}\nsignature {}\n",
            self.public(),
            hex(&signature.to_bytes())
        ))
    }
}

/// Checks a signature file's text against a component whose SHA-256 is
/// `sha256`; the key that signed it, or why it does not verify.
pub fn verify(text: &str, sha256: &str) -> Result<PublicKey, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some(HEADER) {
        return Err(format!("it does not start with `{HEADER}`"));
    }
    let mut field = |name: &str| {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .map(str::trim)
            .ok_or_else(|| format!("its `{name}` line is missing"))
    };
    let key = PublicKey::parse(field("key")?)?;
    let signed = field("sha256")?.to_ascii_lowercase();
    let signature = field("signature")?;
    if signed != sha256 {
        return Err(format!(
            "it signs another component (sha256 {}…), not this one (sha256 {}…)",
            &signed[..signed.len().min(12)],
            &sha256[..sha256.len().min(12)]
        ));
    }
    let digest = unhex::<32>(&signed).ok_or("its sha256 is not 64 hex digits")?;
    let bytes = unhex::<64>(signature).ok_or("its signature is not 128 hex digits")?;
    key.0
        .verify(
            &[CONTEXT, &digest].concat(),
            &ed25519_dalek::Signature::from_bytes(&bytes),
        )
        .map_err(|_| format!("its signature does not verify with the key it names ({key})"))?;
    Ok(key)
}

/// The most bytes a signature file may have (one is about 300).
const MAX_SIGNATURE_BYTES: u64 = 4096;

/// A signature file's text: a regular file of a few KiB at most, so that
/// a pipe, a device or a huge file put in its place is refused, never
/// waited on or read whole.
pub fn read_signature(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    if meta.len() > MAX_SIGNATURE_BYTES {
        return Err(std::io::Error::other(format!(
            "it is {} bytes; a signature has at most {MAX_SIGNATURE_BYTES}",
            meta.len()
        )));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_SIGNATURE_BYTES)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// The keys a team trusts to sign its components; none: no signature is
/// asked for (the default).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trust {
    keys: Vec<PublicKey>,
}

impl Trust {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        let mut keys = keys;
        keys.dedup();
        Trust { keys }
    }

    /// Whether components must be signed.
    pub fn enforced(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Whether `component`, whose bytes hash to `sha256`, may run: signed,
    /// by a trusted key, beside it. Ok at once when nothing is enforced.
    pub fn check(&self, component: &Path, sha256: &str) -> Result<(), String> {
        if !self.enforced() {
            return Ok(());
        }
        let sig = sig_path(component);
        let trusted = || {
            self.keys
                .iter()
                .map(PublicKey::short)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = match read_signature(&sig) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "it is unsigned (no {} beside it), and this team runs only components signed by a trusted key ({}); sign it with `conclave plugins sign {} --key KEY`",
                    sig.display(),
                    trusted(),
                    component.display()
                ))
            }
            Err(e) => return Err(format!("its signature {}: {e}", sig.display())),
        };
        let key =
            verify(&text, sha256).map_err(|e| format!("its signature {}: {e}", sig.display()))?;
        if !self.keys.contains(&key) {
            return Err(format!(
                "it is signed by {}, which is not a trusted key of this team (trusted: {})",
                key.short(),
                trusted()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "3f0a0b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccdde";

    #[test]
    fn a_signature_verifies_for_its_component_and_key_only() {
        let k = SecretKey::generate().unwrap();
        let text = k.sign(SHA).unwrap();
        assert_eq!(verify(&text, SHA).unwrap(), k.public());
        let other = SHA.replace("3f0a", "3f0b");
        assert!(verify(&text, &other)
            .unwrap_err()
            .contains("signs another component"));
        // A signature copied under another key's name does not verify.
        let k2 = SecretKey::generate().unwrap();
        let forged = text.replace(&k.public().to_string(), &k2.public().to_string());
        assert!(verify(&forged, SHA)
            .unwrap_err()
            .contains("does not verify"));
        // Keys round-trip through their files.
        let again = SecretKey::parse(&k.to_file_text()).unwrap();
        assert_eq!(again.public(), k.public());
        assert_eq!(
            PublicKey::parse(&k.public().to_string()).unwrap(),
            k.public()
        );
        assert!(PublicKey::parse("ed25519:zz").is_err());
        assert!(PublicKey::parse("ssh-ed25519 AAAA")
            .unwrap_err()
            .contains("not a public key"));
    }

    #[test]
    fn a_signature_that_is_not_a_small_regular_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretKey::generate().unwrap();
        let trust = Trust::new(vec![k.public()]);
        let wasm = dir.path().join("p.wasm");
        // A folder in the signature's place.
        std::fs::create_dir(sig_path(&wasm)).unwrap();
        let e = trust.check(&wasm, SHA).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_dir(sig_path(&wasm)).unwrap();
        // A huge one.
        std::fs::write(sig_path(&wasm), vec![b'x'; 10_000]).unwrap();
        let e = trust.check(&wasm, SHA).unwrap_err();
        assert!(e.contains("10000 bytes"), "{e}");
        // The right one.
        std::fs::write(sig_path(&wasm), k.sign(SHA).unwrap()).unwrap();
        trust.check(&wasm, SHA).unwrap();
    }
}
