//! The data directory: the registry, the key passphrase, and the files scripts and the AWS CLI
//! read (`credentials`, `config`, `server-root.pem`, `device-root.pem`, `endpoints.json`).
//! Secrets are written with 0600 permissions; the directory itself is 0700.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use certfleet_registry::{PostgresStore, SqliteStore, Store};
use certfleet_services::NewAccessKey;
use zeroize::Zeroizing;

use crate::config::Config;

/// The environment variable holding the key passphrase.
pub const PASSPHRASE_ENV: &str = "CERTFLEET_KEY_PASSPHRASE";

/// Creates the data directory (0700) if needed.
pub fn create(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Ok(())
}

/// Opens the registry the configuration names: PostgreSQL when a URL is set, else SQLite in
/// the data directory.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.database_url {
        Some(url) => Arc::new(PostgresStore::open(url, None).context("opening the PostgreSQL registry")?),
        None => {
            create(&config.data_dir)?;
            let path = config.data_dir.join("registry.db");
            Arc::new(SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))?)
        }
    })
}

/// The passphrase that seals CA keys: from the environment, the configured file, or a
/// generated file in the data directory (with a warning, since it sits beside what it protects).
pub fn passphrase(config: &Config) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    if let Ok(value) = std::env::var(PASSPHRASE_ENV) {
        anyhow::ensure!(!value.is_empty(), "{PASSPHRASE_ENV} is set but empty");
        return Ok(Zeroizing::new(value.into_bytes()));
    }
    if let Some(path) = &config.passphrase_file {
        let text = Zeroizing::new(
            std::fs::read(path).with_context(|| format!("reading the passphrase file {}", path.display()))?,
        );
        let trimmed = text.trim_ascii();
        anyhow::ensure!(!trimmed.is_empty(), "the passphrase file {} is empty", path.display());
        return Ok(Zeroizing::new(trimmed.to_vec()));
    }
    let path = config.data_dir.join("key-passphrase");
    if path.exists() {
        let text = Zeroizing::new(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
        return Ok(Zeroizing::new(text.trim_ascii().to_vec()));
    }
    let mut random = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut *random).map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let generated = Zeroizing::new(hex::encode(*random).into_bytes());
    write_private(&path, &generated)?;
    tracing::warn!(
        path = %path.display(),
        "no key passphrase given ({PASSPHRASE_ENV} or keys.passphrase_file): generated one beside the data it protects; \
         move it to a secret store for production"
    );
    Ok(generated)
}

/// Writes a file readable by its owner only, replacing it atomically.
pub fn write_private(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(content).with_context(|| format!("writing {}", temporary.display()))?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Writes a public file (certificates, endpoints).
pub fn write_public(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

/// Appends a profile to the AWS CLI files in the data directory (`credentials` and `config`).
/// A profile of the same name is replaced.
pub fn add_profile(data_dir: &Path, profile: &str, key: &NewAccessKey, region: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !profile.is_empty() && profile.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "profile names are letters, digits, '-', '_' and '.'"
    );
    let credentials = data_dir.join("credentials");
    let section = format!(
        "[{profile}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        key.access_key_id, key.secret_access_key
    );
    write_private(&credentials, replace_section(&read_or_empty(&credentials)?, profile, &section).as_bytes())?;

    let config = data_dir.join("config");
    let header = if profile == "default" { "default".to_owned() } else { format!("profile {profile}") };
    let section = format!("[{header}]\nregion = {region}\noutput = json\n");
    write_private(&config, replace_section(&read_or_empty(&config)?, &header, &section).as_bytes())?;
    Ok(())
}

fn read_or_empty(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// `text` (an INI file) with the section `[name]` replaced by `section`, or `section` appended.
fn replace_section(text: &str, name: &str, section: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            skipping = trimmed[1..trimmed.len() - 1].trim() == name;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(section);
    out
}

/// The paths of the data directory's well-known files.
pub struct Files {
    pub credentials: PathBuf,
    pub config: PathBuf,
    pub server_root: PathBuf,
    pub device_root: PathBuf,
    pub endpoints: PathBuf,
}

impl Files {
    pub fn of(data_dir: &Path) -> Self {
        Files {
            credentials: data_dir.join("credentials"),
            config: data_dir.join("config"),
            server_root: data_dir.join("server-root.pem"),
            device_root: data_dir.join("device-root.pem"),
            endpoints: data_dir.join("endpoints.json"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_replace_their_own_section_only() {
        let text = "[default]\na = 1\n\n[other]\nb = 2\n";
        let replaced = replace_section(text, "default", "[default]\na = 9\n");
        assert_eq!(replaced, "[other]\nb = 2\n\n[default]\na = 9\n");
        assert_eq!(replace_section("", "x", "[x]\n"), "[x]\n");
        assert_eq!(replace_section(text, "new", "[new]\nc = 3\n"), format!("{text}\n[new]\nc = 3\n"));
    }
}
