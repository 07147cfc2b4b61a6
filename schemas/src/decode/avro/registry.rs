//! Where writer schemas come from: a Confluent-compatible Schema Registry over HTTP, or a
//! directory of `.avsc` files for setups without one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The answer of a schema source for one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The schema text (Avro schema JSON).
    Avro(String),
    /// The source has no schema with this id: the record is bad input.
    Unknown,
    /// The id names a schema of another type (Protobuf, JSON Schema).
    NotAvro(String),
}

/// The source could not answer now (connection refused, timeout, 5xx). The record is good
/// until proven otherwise: the engine retries, it never dead-letters on this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Looks writer schemas up by id. Ids are immutable in a registry, so answers are cached for good.
pub trait SchemaSource: Send + Sync + fmt::Debug {
    fn fetch(&self, id: u32) -> Result<Fetched, Unavailable>;
}

/// A Confluent-compatible Schema Registry (`GET /schemas/ids/{id}`).
pub struct HttpRegistry {
    base_url: String,
    agent: ureq::Agent,
    /// `Basic ...`, when credentials are configured. Never printed (see the Debug impl).
    authorization: Option<String>,
    attempts: u32,
    retry_backoff: Duration,
}

impl fmt::Debug for HttpRegistry {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("HttpRegistry")
            .field("base_url", &self.base_url)
            .field("authenticated", &self.authorization.is_some())
            .finish()
    }
}

impl HttpRegistry {
    /// `attempts` tries per fetch, doubling `retry_backoff` between them, before the registry
    /// is reported unavailable.
    pub fn new(
        base_url: &str,
        credentials: Option<(&str, &str)>,
        request_timeout: Duration,
        attempts: u32,
        retry_backoff: Duration,
    ) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(request_timeout))
            // Status codes are answers here (404 = unknown id), not errors.
            .http_status_as_error(false)
            .build()
            .new_agent();
        let authorization = credentials.map(|(user, password)| {
            use base64::Engine as _;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            agent,
            authorization,
            attempts: attempts.max(1),
            retry_backoff,
        }
    }

    /// Registers `schema` (Avro schema JSON) under `subject`, as a producer's serializer
    /// does, and returns its id (the existing id when the registry already has it).
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, Unavailable> {
        let mut backoff = self.retry_backoff;
        let mut attempt = 1;
        loop {
            match self.register_once(subject, schema) {
                Ok(id) => return Ok(id),
                Err(error) if attempt >= self.attempts => return Err(error),
                Err(_) => {
                    std::thread::sleep(backoff);
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }

    fn register_once(&self, subject: &str, schema: &str) -> Result<u32, Unavailable> {
        let url = format!("{}/subjects/{subject}/versions", self.base_url);
        let mut request = self
            .agent
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json");
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let body = serde_json::json!({ "schema": schema }).to_string();
        let mut response = request
            .send(body.as_bytes())
            .map_err(|error| Unavailable(format!("schema registry request failed: {error}")))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(Unavailable(format!(
                "schema registry refused to register under `{subject}` (HTTP {status})"
            )));
        }
        #[derive(serde::Deserialize)]
        struct Registered {
            id: u32,
        }
        let text = response.body_mut().read_to_string().map_err(|error| {
            Unavailable(format!("schema registry response unreadable: {error}"))
        })?;
        serde_json::from_str::<Registered>(&text)
            .map(|registered| registered.id)
            .map_err(|error| Unavailable(format!("schema registry response has no id: {error}")))
    }

    fn fetch_once(&self, id: u32) -> Result<Fetched, Unavailable> {
        let url = format!("{}/schemas/ids/{id}", self.base_url);
        let mut request = self
            .agent
            .get(&url)
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let mut response = request
            .call()
            .map_err(|error| Unavailable(format!("schema registry request failed: {error}")))?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            404 => return Ok(Fetched::Unknown),
            401 | 403 => {
                return Err(Unavailable(format!(
                    "schema registry refused the credentials (HTTP {status})"
                )))
            }
            _ => {
                return Err(Unavailable(format!(
                    "schema registry answered HTTP {status}"
                )))
            }
        }
        let body = response.body_mut().read_to_string().map_err(|error| {
            Unavailable(format!("schema registry response unreadable: {error}"))
        })?;
        parse_schema_response(&body)
    }
}

/// The body of `GET /schemas/ids/{id}`: `{"schema": "...", "schemaType": "AVRO"}` (the type is
/// omitted for Avro).
fn parse_schema_response(body: &str) -> Result<Fetched, Unavailable> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct SchemaResponse {
        schema: String,
        #[serde(default)]
        schema_type: Option<String>,
    }
    let response: SchemaResponse = serde_json::from_str(body).map_err(|error| {
        Unavailable(format!("schema registry response is not a schema: {error}"))
    })?;
    match response.schema_type.as_deref() {
        None | Some("AVRO") => Ok(Fetched::Avro(response.schema)),
        Some(other) => Ok(Fetched::NotAvro(other.to_owned())),
    }
}

impl SchemaSource for HttpRegistry {
    fn fetch(&self, id: u32) -> Result<Fetched, Unavailable> {
        let mut backoff = self.retry_backoff;
        let mut attempt = 1;
        loop {
            match self.fetch_once(id) {
                Ok(fetched) => return Ok(fetched),
                Err(error) if attempt >= self.attempts => return Err(error),
                Err(_) => {
                    std::thread::sleep(backoff);
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }
}

/// Writer schemas in a directory: `<id>.avsc` or `<id>-<anything>.avsc`.
#[derive(Debug)]
pub struct DirectoryRegistry {
    directory: PathBuf,
}

impl DirectoryRegistry {
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        Self {
            directory: directory.into(),
        }
    }

    fn file_for(&self, id: u32) -> std::io::Result<Option<PathBuf>> {
        let wanted = id.to_string();
        for entry in std::fs::read_dir(&self.directory)? {
            let path = entry?.path();
            if path.extension().and_then(|extension| extension.to_str()) != Some("avsc") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|stem| stem.to_str()) else {
                continue;
            };
            let number = stem.split_once('-').map_or(stem, |(number, _)| number);
            if number == wanted {
                return Ok(Some(path));
            }
        }
        Ok(None)
    }
}

impl SchemaSource for DirectoryRegistry {
    fn fetch(&self, id: u32) -> Result<Fetched, Unavailable> {
        let unavailable = |error: std::io::Error| {
            Unavailable(format!(
                "schema directory {} unreadable: {error}",
                self.directory.display()
            ))
        };
        match self.file_for(id).map_err(unavailable)? {
            None => Ok(Fetched::Unknown),
            Some(path) => read_schema_file(&path).map(Fetched::Avro),
        }
    }
}

/// Reads one schema file; an unreadable file is a retriable condition (it may be mid-deploy).
pub(crate) fn read_schema_file(path: &Path) -> Result<String, Unavailable> {
    std::fs::read_to_string(path).map_err(|error| {
        Unavailable(format!(
            "schema file {} unreadable: {error}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_answers() {
        assert_eq!(
            parse_schema_response(r#"{"schema":"\"string\""}"#),
            Ok(Fetched::Avro("\"string\"".into()))
        );
        assert_eq!(
            parse_schema_response(r#"{"schema":"x","schemaType":"PROTOBUF"}"#),
            Ok(Fetched::NotAvro("PROTOBUF".into()))
        );
        assert!(parse_schema_response("<html>").is_err());
    }

    #[test]
    fn directory_registry_finds_files_by_id_prefix() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("7-orders.avsc"), "\"long\"").unwrap();
        std::fs::write(directory.path().join("8.avsc"), "\"string\"").unwrap();
        std::fs::write(directory.path().join("9.txt"), "\"string\"").unwrap();
        let registry = DirectoryRegistry::new(directory.path());
        assert_eq!(registry.fetch(7), Ok(Fetched::Avro("\"long\"".into())));
        assert_eq!(registry.fetch(8), Ok(Fetched::Avro("\"string\"".into())));
        assert_eq!(registry.fetch(9), Ok(Fetched::Unknown));
        assert_eq!(registry.fetch(70), Ok(Fetched::Unknown));
        assert!(DirectoryRegistry::new("/nonexistent/dir").fetch(1).is_err());
    }

    #[test]
    fn an_unreachable_registry_is_unavailable_not_unknown() {
        // A port nothing listens on: connection refused, retried, then unavailable.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let registry = HttpRegistry::new(
            &format!("http://127.0.0.1:{port}"),
            Some(("user", "hunter2-canary")),
            Duration::from_millis(500),
            2,
            Duration::from_millis(10),
        );
        let error = registry.fetch(1).unwrap_err();
        assert!(!error.0.contains("hunter2-canary"));
        assert!(!format!("{registry:?}").contains("hunter2-canary"));
    }
}
