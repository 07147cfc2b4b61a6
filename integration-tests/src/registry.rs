//! A small Confluent-compatible Schema Registry for tests: `GET /schemas/ids/{id}` and
//! `POST /subjects/{subject}/versions`, over HTTP/1.1 on a loopback port, with a switch that
//! makes it answer 503 (an outage).
//!
//! No registry server installs from the package registries this project can reach (Karapace is
//! not published on PyPI), so the harness speaks the protocol itself.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;

#[derive(Default)]
struct State {
    /// Schema texts; the id of `schemas[i]` is `i + 1`.
    schemas: Vec<String>,
    subjects: BTreeMap<String, Vec<u32>>,
    down: bool,
    requests: u64,
}

pub struct SchemaRegistry {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SchemaRegistry {
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = serve(stream, &state);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Ok(Self {
            port,
            state,
            stop,
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Registers `schema` under `subject` (as a producer's serializer would) and returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        register(&mut self.state.lock().unwrap(), subject, schema)
    }

    /// While down, every request gets HTTP 503.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }
}

impl Drop for SchemaRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn register(state: &mut State, subject: &str, schema: &str) -> u32 {
    let id = match state.schemas.iter().position(|known| known == schema) {
        Some(index) => index as u32 + 1,
        None => {
            state.schemas.push(schema.to_owned());
            state.schemas.len() as u32
        }
    };
    let versions = state.subjects.entry(subject.to_owned()).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    id
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();

    let (status, response) = {
        let mut state = state.lock().unwrap();
        state.requests += 1;
        if state.down {
            (
                503,
                r#"{"error_code":50301,"message":"unavailable"}"#.to_owned(),
            )
        } else {
            route(&mut state, method, path, &body)
        }
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        _ => "Service Unavailable",
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{response}",
        response.len()
    )?;
    stream.flush()
}

fn route(state: &mut State, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["schemas", "ids", id]) => {
            let schema = id
                .parse::<usize>()
                .ok()
                .and_then(|id| id.checked_sub(1))
                .and_then(|index| state.schemas.get(index));
            match schema {
                Some(schema) => (200, serde_json::json!({ "schema": schema }).to_string()),
                None => (
                    404,
                    r#"{"error_code":40403,"message":"Schema not found"}"#.to_owned(),
                ),
            }
        }
        ("POST", ["subjects", subject, "versions"]) => {
            let Some(schema) = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|value| value.get("schema")?.as_str().map(str::to_owned))
            else {
                return (
                    422,
                    r#"{"error_code":42201,"message":"Invalid schema"}"#.to_owned(),
                );
            };
            let id = register(state, subject, &schema);
            (200, serde_json::json!({ "id": id }).to_string())
        }
        _ => (
            404,
            r#"{"error_code":404,"message":"HTTP 404 Not Found"}"#.to_owned(),
        ),
    }
}
