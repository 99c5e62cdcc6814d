//! The server's configuration: a JSON file (`quarry schema server` prints its schema), then
//! flags and environment variables over it.

use anyhow::{Context as _, Result, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How `quarry serve` listens, authenticates, limits and logs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on. Loopback by default; configure `tls` (or a TLS-terminating
    /// proxy) before listening on a public address.
    pub listen: String,
    /// SHA-256 (64 hex digits) of the admin API key. The `QUARRY_ADMIN_KEY` environment
    /// variable (the key itself) takes precedence. With neither, the first start makes a key,
    /// prints it once and keeps its hash as `server/admin-key.sha256` in the control store (by
    /// default, that file in the data directory).
    pub admin_key_sha256: Option<String>,
    /// Largest request body in bytes (JSON and NDJSON).
    pub max_body_bytes: usize,
    /// Largest plugin upload in bytes.
    pub max_plugin_bytes: usize,
    /// Seconds in-flight requests may take to finish after SIGTERM or Ctrl-C.
    pub shutdown_grace_seconds: u64,
    /// `text` or `json` log lines on stderr.
    pub log_format: LogFormat,
    /// Serve HTTPS with this certificate and key (PEM files); plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// The quotas of tenants that have none of their own.
    pub default_quotas: Quotas,
    /// Most distinct values a metrics label keeps (tenants, strategies, models); later ones
    /// are counted under `other`.
    pub max_label_values: usize,
    /// Most jobs (builds, background ingests) a tenant may have queued or running.
    pub max_jobs_per_tenant: usize,
    /// Milliseconds an over-quota request waits before its 429 is sent (never past its
    /// `Retry-After`), so a client that retries at once spends a connection's time, not the
    /// server's CPU. 0 answers at once.
    pub refusal_delay_ms: u64,
    /// Most refusals waiting at once, across tenants; past it they are sent at once with
    /// `Connection: close`.
    pub max_delayed_refusals: usize,
    /// Where tenants, keys, plugins, model manifests, routes and pipelines are kept. Unset:
    /// files in the data directory, for one server. Replicas share one etcd, and each follows
    /// the changes the others make.
    pub control: Option<ControlConfig>,
    /// Where collections (items, fields, blobs) are kept. Unset: `collections.redb` in the data
    /// directory, this server's own. Replicas share one Milvus, and take turns to commit
    /// through the control store.
    pub collections: Option<CollectionsConfig>,
}

/// A collection store that several servers share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum CollectionsConfig {
    Milvus(MilvusConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MilvusConfig {
    /// The Milvus server's URL, such as `http://10.0.0.6:19530`.
    pub uri: String,
    /// The prefix of the Milvus collections this service makes (letters, digits and `_`), so
    /// services can share a Milvus.
    #[serde(default = "default_milvus_namespace")]
    pub namespace: String,
}

fn default_milvus_namespace() -> String {
    "quarry".into()
}

/// A control store that several servers share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum ControlConfig {
    Etcd(EtcdConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd cluster, such as `http://10.0.0.5:2379`.
    pub endpoints: Vec<String>,
    /// The key prefix this service keeps everything under, so services can share a cluster.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

fn default_namespace() -> String {
    "quarry".into()
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7700".into(),
            admin_key_sha256: None,
            max_body_bytes: 16 << 20,
            max_plugin_bytes: 64 << 20,
            shutdown_grace_seconds: 30,
            log_format: LogFormat::Text,
            tls: None,
            default_quotas: Quotas::default(),
            max_label_values: 1000,
            max_jobs_per_tenant: 4,
            refusal_delay_ms: 250,
            max_delayed_refusals: 4096,
            control: None,
            collections: None,
        }
    }
}

/// A TLS certificate chain and its private key, PEM.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub certificate: std::path::PathBuf,
    pub private_key: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// What one tenant may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Sustained requests per second (a token bucket).
    pub requests_per_second: f64,
    /// Requests the bucket holds: how far a burst may go above the sustained rate.
    pub burst: f64,
    /// Requests in flight at once.
    pub concurrent_calls: u32,
    /// Compute seconds per second: guest time on a compute slot plus the tenant's share of
    /// model inference, together (1.0 is one core's worth).
    pub compute_per_second: f64,
    /// Compute seconds the budget holds for bursts.
    pub compute_burst_seconds: f64,
    /// Bytes of linear memory each of the tenant's plugin calls may grow to (the host's
    /// `limits.memory_bytes` when unset; never above it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_memory_bytes: Option<u64>,
    /// Bytes the tenant may store: keys and values of its items, fields and blobs, in all its
    /// collections. A write past it stores nothing and is refused; deletes always go through.
    /// Unset: no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// Bytes of plugins the tenant may keep uploaded (its components, in the control store):
    /// an upload past it is refused until the tenant removes versions it no longer routes to.
    pub plugin_bytes: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas { requests_per_second: 50.0, burst: 100.0, concurrent_calls: 8, compute_per_second: 1.0, compute_burst_seconds: 10.0, plugin_memory_bytes: None, stored_bytes: None, plugin_bytes: 256 << 20 }
    }
}

impl Quotas {
    pub fn validate(&self) -> Result<()> {
        for (key, value, max) in [
            ("requests_per_second", self.requests_per_second, 1e6),
            ("burst", self.burst, 1e7),
            ("compute_per_second", self.compute_per_second, 4096.0),
            ("compute_burst_seconds", self.compute_burst_seconds, 86_400.0),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= max) {
                bail!("quota `{key}` is {value}; it must be a number above 0 and at most {max}");
            }
        }
        if self.burst < 1.0 {
            bail!("quota `burst` is {}; it must be at least 1 request", self.burst);
        }
        if !(1..=10_000).contains(&self.concurrent_calls) {
            bail!("quota `concurrent_calls` is {}; it must be 1-10000", self.concurrent_calls);
        }
        if self.plugin_memory_bytes.is_some_and(|bytes| bytes < 1 << 20) {
            bail!("quota `plugin_memory_bytes` is {}; give at least 1048576 (1 MiB), or leave it out for the host's limit", self.plugin_memory_bytes.unwrap_or(0));
        }
        if self.plugin_bytes < 1 << 20 {
            bail!("quota `plugin_bytes` is {}; give at least 1048576 (1 MiB): a plugin is rarely smaller", self.plugin_bytes);
        }
        if self.stored_bytes == Some(0) {
            bail!("quota `stored_bytes` is 0, which refuses every write; give a number of bytes, or leave it out for no cap");
        }
        Ok(())
    }
}

impl ServerConfig {
    /// Read a configuration file (JSON); unknown keys are refused.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read server config {}", path.display()))?;
        let config: ServerConfig = serde_json::from_str(&text)
            .with_context(|| format!("server config {} is not valid; `quarry schema server` prints what it may hold", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        self.listen.parse::<std::net::SocketAddr>().with_context(|| format!("`listen` is `{}`; give an address and port such as 127.0.0.1:7700", self.listen))?;
        if let Some(hash) = &self.admin_key_sha256
            && (hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            bail!("`admin_key_sha256` must be 64 hex digits (the SHA-256 of the admin key, e.g. from `printf %s KEY | sha256sum`)");
        }
        if self.max_body_bytes < 1024 || self.max_plugin_bytes < 1024 {
            bail!("`max_body_bytes` and `max_plugin_bytes` must be at least 1024");
        }
        if self.max_label_values == 0 || self.max_jobs_per_tenant == 0 {
            bail!("`max_label_values` and `max_jobs_per_tenant` must be at least 1");
        }
        if self.refusal_delay_ms > 10_000 {
            bail!("`refusal_delay_ms` is {}; keep it at most 10000 (a refusal never waits past its Retry-After anyway)", self.refusal_delay_ms);
        }
        if let Some(ControlConfig::Etcd(etcd)) = &self.control {
            if etcd.endpoints.is_empty() {
                bail!("`control.etcd.endpoints` is empty; give the etcd client URLs, such as [\"http://127.0.0.1:2379\"]");
            }
            for endpoint in &etcd.endpoints {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) || endpoint.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    bail!("`control.etcd.endpoints` holds `{}`; give URLs such as http://127.0.0.1:2379", endpoint.escape_debug());
                }
            }
        }
        if let Some(CollectionsConfig::Milvus(milvus)) = &self.collections {
            let uri = &milvus.uri;
            if !(uri.starts_with("http://") || uri.starts_with("https://")) || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("`collections.milvus.uri` is `{}`; give a URL such as http://127.0.0.1:19530", uri.escape_debug());
            }
            let namespace = &milvus.namespace;
            if namespace.is_empty() || namespace.len() > 64 || !namespace.starts_with(|c: char| c.is_ascii_alphabetic()) || !namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("`collections.milvus.namespace` is `{}`; use 1-64 letters, digits and `_`, starting with a letter", namespace.escape_debug());
            }
        }
        self.default_quotas.validate().context("in `default_quotas`")
    }
}

/// The JSON Schema of the configuration file.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ServerConfig)).expect("a schema serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.json");
        std::fs::write(&path, r#"{"listn": "127.0.0.1:1"}"#).unwrap();
        let err = format!("{:#}", ServerConfig::load(&path).unwrap_err());
        assert!(err.contains("unknown field `listn`"), "{err}");
        std::fs::write(&path, r#"{"listen": "127.0.0.1:9", "default_quotas": {"burst": 0.5}}"#).unwrap();
        let config = ServerConfig::load(&path).unwrap();
        assert_eq!(config.default_quotas.requests_per_second, 50.0, "unset keys keep their defaults");
        let err = format!("{:#}", config.validate().unwrap_err());
        assert!(err.contains("`burst`"), "{err}");
        let mut config = ServerConfig::default();
        config.default_quotas.compute_per_second = f64::NAN;
        assert!(format!("{:#}", config.validate().unwrap_err()).contains("compute_per_second"));
        config = ServerConfig { listen: "localhost".into(), ..Default::default() };
        assert!(format!("{:#}", config.validate().unwrap_err()).contains("address and port"));
        assert!(schema()["properties"]["default_quotas"].is_object());
    }

    #[test]
    fn an_etcd_control_store_needs_urls_and_the_flag_keeps_the_files_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.json");
        std::fs::write(&path, r#"{"control": {"etcd": {"endpoints": []}}}"#).unwrap();
        let err = format!("{:#}", ServerConfig::load(&path).unwrap().validate().unwrap_err());
        assert!(err.contains("`control.etcd.endpoints` is empty"), "{err}");
        std::fs::write(&path, r#"{"control": {"etcd": {"endpoints": ["127.0.0.1:2379"]}}}"#).unwrap();
        let err = format!("{:#}", ServerConfig::load(&path).unwrap().validate().unwrap_err());
        assert!(err.contains("give URLs such as http://127.0.0.1:2379"), "{err}");
        std::fs::write(&path, r#"{"control": {"etcd": {"endpoints": ["http://a:2379"], "namespace": "prod"}}}"#).unwrap();
        let args = ServeArgs { config: Some(path), etcd: vec!["http://b:2379".into(), "http://c:2379".into()], ..Default::default() };
        let expected = EtcdConfig { endpoints: vec!["http://b:2379".into(), "http://c:2379".into()], namespace: "prod".into() };
        assert_eq!(args.config().unwrap().control, Some(ControlConfig::Etcd(expected)));
    }

    #[test]
    fn a_milvus_collection_store_needs_a_url_and_a_plain_namespace_and_the_flag_keeps_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.json");
        for (bad, says) in [
            (r#"{"uri": "127.0.0.1:19530"}"#, "give a URL such as http://127.0.0.1:19530"),
            (r#"{"uri": "http://a:19530\nx"}"#, "give a URL such as"),
            (r#"{"uri": "http://a:19530", "namespace": "a-b"}"#, "`collections.milvus.namespace` is `a-b`"),
            (r#"{"uri": "http://a:19530", "namespace": ""}"#, "use 1-64 letters"),
        ] {
            std::fs::write(&path, format!(r#"{{"collections": {{"milvus": {bad}}}}}"#)).unwrap();
            let err = format!("{:#}", ServerConfig::load(&path).unwrap().validate().unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
        std::fs::write(&path, r#"{"collections": {"milvus": {"uri": "http://a:19530", "namespace": "prod"}}}"#).unwrap();
        let args = ServeArgs { config: Some(path), milvus: Some("http://b:19530".into()), ..Default::default() };
        let expected = MilvusConfig { uri: "http://b:19530".into(), namespace: "prod".into() };
        assert_eq!(args.config().unwrap().collections, Some(CollectionsConfig::Milvus(expected)));
    }
}

/// `quarry serve`'s flags: each overrides the config file's key, and reads an environment
/// variable when the flag is not given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// A JSON config file (`quarry schema server` prints its schema).
    #[arg(long, env = "QUARRY_SERVER_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Address and port to listen on [default: 127.0.0.1:7700]
    #[arg(long, env = "QUARRY_LISTEN")]
    pub listen: Option<String>,
    /// Log lines as text or JSON.
    #[arg(long, env = "QUARRY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Seconds requests in flight may take to finish after SIGTERM.
    #[arg(long, env = "QUARRY_SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "QUARRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "QUARRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Keep the control plane in etcd at these client URLs (comma-separated), shared by replicas.
    #[arg(long, env = "QUARRY_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Keep collections in Milvus at this URL, shared by replicas.
    #[arg(long, env = "QUARRY_MILVUS")]
    pub milvus: Option<String>,
}

impl ServeArgs {
    /// The config file (or the defaults) with the flags and environment over it, validated.
    pub fn config(&self) -> Result<ServerConfig> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::load(path)?,
            None => ServerConfig::default(),
        };
        if let Some(listen) = &self.listen {
            config.listen = listen.clone();
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        if let Some(grace) = self.shutdown_grace_seconds {
            config.shutdown_grace_seconds = grace;
        }
        if let (Some(certificate), Some(private_key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(TlsFiles { certificate: certificate.clone(), private_key: private_key.clone() });
        }
        if !self.etcd.is_empty() {
            let namespace = match &config.control {
                Some(ControlConfig::Etcd(etcd)) => etcd.namespace.clone(),
                None => default_namespace(),
            };
            config.control = Some(ControlConfig::Etcd(EtcdConfig { endpoints: self.etcd.clone(), namespace }));
        }
        if let Some(uri) = &self.milvus {
            let namespace = match &config.collections {
                Some(CollectionsConfig::Milvus(milvus)) => milvus.namespace.clone(),
                None => default_milvus_namespace(),
            };
            config.collections = Some(CollectionsConfig::Milvus(MilvusConfig { uri: uri.clone(), namespace }));
        }
        config.validate()?;
        Ok(config)
    }
}
