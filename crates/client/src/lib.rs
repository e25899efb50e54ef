//! A small client of the AWS IoT API for certfleet's own tools (the load tool, the admin
//! commands that talk to a running server): keep-alive HTTP/1.1 over rustls, each request signed
//! with SigV4 exactly as the AWS SDKs sign it.
//!
//! It is deliberately minimal: one connection per [`Connection`], requests in sequence.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// Where and as whom to connect.
pub struct Target {
    url: http::Uri,
    host: String,
    access_key_id: String,
    secret_access_key: String,
    region: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

/// One request, unsigned.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: &'static str,
    /// Path and query, already percent-encoded as they go on the wire.
    pub path: String,
    pub body: Bytes,
}

/// An open keep-alive connection.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Target {
    /// A certfleet data directory: the URL from `endpoints.json`, the keys of `profile` in
    /// `credentials`, and `server-root.pem` as the trust anchor.
    pub fn from_data_dir(dir: &Path, profile: &str, region: &str) -> anyhow::Result<Self> {
        let endpoints: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("endpoints.json")).context("reading endpoints.json")?,
        )?;
        let url = endpoints["api"].as_str().context("endpoints.json has no api URL")?;
        let (key, secret) = profile_keys(&dir.join("credentials"), profile)?;
        Target::new(url, &key, &secret, Some(&dir.join("server-root.pem")), region)
    }

    /// An explicit URL (`https://host:port` or `http://host:port`), keys and trust anchors.
    pub fn new(
        url: &str,
        access_key_id: &str,
        secret_access_key: &str,
        ca_bundle: Option<&Path>,
        region: &str,
    ) -> anyhow::Result<Self> {
        let url: http::Uri = url.parse().context("the API URL")?;
        let host = url.authority().context("the URL has no host")?.as_str().to_owned();
        let tls = match url.scheme_str() {
            Some("https") => {
                let mut roots = rustls::RootCertStore::empty();
                let bundle: PathBuf = ca_bundle.context("https needs a CA bundle")?.to_owned();
                for certificate in
                    CertificateDer::pem_file_iter(&bundle).with_context(|| format!("reading {}", bundle.display()))?
                {
                    roots.add(certificate?)?;
                }
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = ServerName::try_from(url.host().context("no host")?.to_owned())?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
            Some("http") => None,
            other => bail!("unsupported URL scheme {other:?}"),
        };
        Ok(Target {
            url,
            host,
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            region: region.to_owned(),
            tls,
        })
    }

    /// Opens a keep-alive connection.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let authority = self.url.authority().context("the URL has no host")?.as_str().to_owned();
        let tcp = TcpStream::connect(&authority).await.with_context(|| format!("connecting to {authority}"))?;
        tcp.set_nodelay(true)?;
        let sender = match &self.tls {
            Some((connector, name)) => {
                let stream = connector.connect(name.clone(), tcp).await.context("tls handshake")?;
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                sender
            }
            None => {
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(connection);
                sender
            }
        };
        Ok(Connection { sender })
    }

    /// Signs and sends one request on `connection`; returns its status and body.
    pub async fn send(&self, connection: &mut Connection, call: &Call) -> anyhow::Result<(u16, Bytes)> {
        let (path, query) = call.path.split_once('?').unwrap_or((&call.path, ""));
        let mut headers = vec![("host", self.host.as_str())];
        if !call.body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        let signed = certfleet_sigv4::sign(
            &certfleet_sigv4::Request {
                method: call.method,
                raw_path: path,
                raw_query: query,
                headers: &headers,
                body: &call.body,
            },
            &self.access_key_id,
            &self.secret_access_key,
            &self.region,
            "iot",
            time::OffsetDateTime::now_utc(),
        );
        let mut request = http::Request::builder().method(call.method).uri(&call.path);
        for (name, value) in
            headers.iter().copied().chain(signed.iter().map(|(name, value)| (name.as_str(), value.as_str())))
        {
            request = request.header(name, value);
        }
        connection.sender.ready().await?;
        let response = connection.sender.send_request(request.body(Full::new(call.body.clone()))?).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

impl Connection {
    /// Whether the server closed the connection (it must be opened again).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// A profile's keys from an AWS shared-credentials file.
pub fn profile_keys(path: &Path, profile: &str) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let header = format!("[{profile}]");
    let mut inside = false;
    let (mut key, mut secret) = (None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
        } else if inside && let Some((name, value)) = line.split_once('=') {
            match name.trim() {
                "aws_access_key_id" => key = Some(value.trim().to_owned()),
                "aws_secret_access_key" => secret = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    Ok((
        key.with_context(|| format!("no access key for profile {profile}"))?,
        secret.with_context(|| format!("no secret for profile {profile}"))?,
    ))
}
