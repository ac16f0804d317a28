//! A small Kubernetes API server for tests: it serves real API objects (JSON
//! in the API-reference shapes) over HTTP on 127.0.0.1 with list
//! (resourceVersion), watch (chunked stream of JSON events from a
//! resourceVersion, BOOKMARK events, ERROR 410 Expired after compaction, ended after
//! `timeoutSeconds`),
//! label-existence selectors, and merge PATCH of the Service status
//! subresource, in plain HTTP or over TLS. Tests can drop every watch,
//! compact history, make the server fail with 500s, hold PATCHes unanswered, or accept
//! watches and then send nothing.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// A resource collection the server knows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn of_path(path: &str) -> Option<Kind> {
        match path {
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "/api/v1/nodes" => Some(Kind::Node),
            _ => None,
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
}

#[derive(Default)]
struct Collection {
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, type, object)
    events: Vec<(u64, &'static str, Value)>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    collections: HashMap<Kind, Collection>,
    /// Bumped to end every open watch.
    generation: u64,
    failing: bool,
    /// Watches are refused with 403, as for a role without the `watch` verb.
    forbid_watch: bool,
    /// PATCHes wait, unanswered, while this is set.
    hang_patches: bool,
    /// Watches begun while this is set are answered (200, headers) and then get nothing,
    /// not even their end.
    hang_watches: bool,
    shutdown: bool,
    requests: Vec<String>,
    /// Each request's `Authorization` header ("" when it had none).
    authorizations: Vec<String>,
    patches: Vec<(String, String, Value)>,
}

pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Arc<(Mutex<State>, Condvar)>,
}

fn key_of(obj: &Value) -> String {
    let m = &obj["metadata"];
    match m["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", m["name"].as_str().unwrap_or("")),
        None => m["name"].as_str().unwrap_or("").to_owned(),
    }
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Writes `dir/kubeconfig` pointing kube at `url` with a bearer token, trusting the PEM
/// file `ca` for HTTPS.
pub fn write_kubeconfig(
    dir: &std::path::Path,
    url: &str,
    ca: Option<&std::path::Path>,
) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let ca = ca
        .map(|c| format!("    certificate-authority: {}\n", c.display()))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n{ca}contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: test-token\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes `dir/kubeconfig` pointing kube at `url` with a user whose credentials come from
/// a plugin (`users[].user.exec`): `/bin/sh` running `script`, written to
/// `dir/credential-plugin.sh` (run by the shell rather than executed itself, so that no
/// "text file busy" can come of a test thread forking while it is written).
pub fn write_exec_kubeconfig(dir: &std::path::Path, url: &str, script: &str) -> std::path::PathBuf {
    let plugin = dir.join("credential-plugin.sh");
    std::fs::write(&plugin, script).unwrap();
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [{:?}]\n      interactiveMode: Never\n",
        plugin.display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A credential plugin's script that gives the bearer token `token` at once.
pub fn exec_token(token: &str) -> String {
    format!(
        "printf '%s' '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{token}\"}}}}'\n"
    )
}

/// A credential plugin's script that hangs for a minute, as one waiting on a login or an
/// identity provider that does not answer, then gives a token.
pub fn exec_hung() -> String {
    format!("sleep 60\n{}", exec_token("late-token"))
}

/// One endpoint of a slice: (pod address, node, ready, serving, terminating).
pub type Endpoint<'a> = (&'a str, &'a str, bool, bool, bool);

/// An EndpointSlice of `service` in `ns` as the EndpointSlice controller writes it, with
/// `eps` and its `ports` list (name, protocol, resolved target port), which kube-proxy
/// (and dsrgate) match to the Service's ports by name and protocol.
pub fn endpoint_slice(
    ns: &str,
    name: &str,
    service: &str,
    family: &str,
    eps: &[Endpoint],
    ports: Value,
) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(addr, node, ready, serving, terminating)| {
            json!({
                "addresses": [addr],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{service}-{addr}"), "uid": format!("pod-{addr}")},
                "zone": "zone-a"
            })
        })
        .collect();
    json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": format!("uid-{name}"),
            "generateName": format!("{service}-"),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service, "uid": format!("uid-{ns}-{service}"), "controller": true, "blockOwnerDeletion": true}]
        },
        "addressType": family,
        "endpoints": endpoints,
        "ports": ports
    })
}

/// A certificate authority and a server certificate it signed for 127.0.0.1, as a
/// cluster's CA signs the API server's: the CA in PEM, and a TLS configuration that
/// presents the server certificate.
pub fn test_pki() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "dsrgate test cluster CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    (ca.pem(), tls)
}

impl FakeApiServer {
    /// Serves plain HTTP.
    pub fn start() -> FakeApiServer {
        FakeApiServer::serve(None)
    }

    /// Serves HTTPS only, with `tls` (its certificate chain and key).
    pub fn start_tls(tls: rustls::ServerConfig) -> FakeApiServer {
        FakeApiServer::serve(Some(Arc::new(tls)))
    }

    fn serve(tls: Option<Arc<rustls::ServerConfig>>) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new((
            Mutex::new(State {
                rv: 100,
                ..State::default()
            }),
            Condvar::new(),
        ));
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if st.0.lock().unwrap().shutdown {
                    return;
                }
                let (st, tls) = (st.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = match tls {
                        None => handle(&mut { stream }, &st),
                        Some(cfg) => serve_tls(cfg, stream, &st),
                    };
                });
            }
        });
        FakeApiServer { addr, state }
    }

    /// A kubeconfig pointing kube at this server (plain HTTP).
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        write_kubeconfig(dir, &format!("http://{}", self.addr), None)
    }

    /// Creates or replaces an object (ADDED / MODIFIED event).
    pub fn apply(&self, kind: Kind, mut obj: Value) {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        obj["kind"] = json!(kind.kind());
        obj["apiVersion"] = json!(kind.api_version());
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&obj);
        let c = s.collections.entry(kind).or_default();
        let ty = if c.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.objects.insert(key, obj.clone());
        c.events.push((rv, ty, obj));
        cv.notify_all();
    }

    /// Deletes an object (DELETED event).
    pub fn delete(&self, kind: Kind, key: &str) {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let c = s.collections.entry(kind).or_default();
        if let Some(mut obj) = c.objects.remove(key) {
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            c.events.push((rv, "DELETED", obj));
        }
        cv.notify_all();
    }

    /// Sends a BOOKMARK to every watch of `kind`; returns its resourceVersion.
    pub fn bookmark(&self, kind: Kind) -> u64 {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let obj = json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
        s.collections
            .entry(kind)
            .or_default()
            .events
            .push((rv, "BOOKMARK", obj));
        cv.notify_all();
        rv
    }

    /// Ends every open watch stream cleanly (as an API server restart or an
    /// idle timeout of a proxy does).
    pub fn drop_watches(&self) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().generation += 1;
        cv.notify_all();
    }

    /// Forgets history: watches from any earlier resourceVersion get 410 Gone.
    pub fn compact(&self) {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        s.rv += 1;
        s.compacted = s.rv;
        s.generation += 1;
        cv.notify_all();
    }

    /// Makes every request fail with 500 (and ends open watches).
    pub fn set_failing(&self, failing: bool) {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        s.failing = failing;
        s.generation += 1;
        cv.notify_all();
    }

    /// Refuses every watch with 403 Forbidden (lists still answer), as the API server does
    /// for a role that may list but not watch.
    #[allow(dead_code)] // Used by the source's tests (control/tests/kube.rs) only.
    pub fn set_forbid_watch(&self, forbid: bool) {
        self.state.0.lock().unwrap().forbid_watch = forbid;
    }

    /// Holds every PATCH unanswered (as a hung connection or a slow admission webhook
    /// does) until called again with `false`; then those held are carried out.
    #[allow(dead_code)] // Used by the daemon's tests (tests/tests/daemon_kube.rs).
    pub fn set_hang_patches(&self, hang: bool) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().hang_patches = hang;
        cv.notify_all();
    }

    /// Answers every watch that begins from now on and then sends it nothing (no event, no
    /// bookmark, not its end at `timeoutSeconds`), as an API server or a proxy that hangs
    /// does, until called again with `false`; those begun meanwhile stay hung.
    #[allow(dead_code)] // Used by control/tests/kube_endpoints.rs only.
    pub fn set_hang_watches(&self, hang: bool) {
        self.state.0.lock().unwrap().hang_watches = hang;
    }

    /// Request lines received so far ("GET /api/v1/nodes?...").
    pub fn requests(&self) -> Vec<String> {
        self.state.0.lock().unwrap().requests.clone()
    }

    /// Each request's `Authorization` header so far, in order ("" for none).
    pub fn authorizations(&self) -> Vec<String> {
        self.state.0.lock().unwrap().authorizations.clone()
    }

    /// PATCHes received: (path, content type, body).
    pub fn patches(&self) -> Vec<(String, String, Value)> {
        self.state.0.lock().unwrap().patches.clone()
    }

    pub fn object(&self, kind: Kind, key: &str) -> Option<Value> {
        self.state
            .0
            .lock()
            .unwrap()
            .collections
            .get(&kind)
            .and_then(|c| c.objects.get(key))
            .cloned()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().shutdown = true;
        cv.notify_all();
        let _ = TcpStream::connect(self.addr);
    }
}

fn respond(stream: &mut impl Write, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    write!(stream, "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len())?;
    stream.flush()
}

fn query(target: &str) -> (String, HashMap<String, String>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let params = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/").replace("%2f", "/")))
        .collect();
    (path.to_owned(), params)
}

fn selected(obj: &Value, params: &HashMap<String, String>) -> bool {
    // Only label-existence selectors ("key") are used by dsrgate.
    match params.get("labelSelector") {
        Some(sel) if !sel.is_empty() => obj["metadata"]["labels"].get(sel.as_str()).is_some(),
        _ => true,
    }
}

/// One HTTPS connection: the TLS handshake, the request, then close_notify, as a real
/// server ends a `Connection: close` response.
fn serve_tls(
    cfg: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    st: &(Mutex<State>, Condvar),
) -> std::io::Result<()> {
    let conn = rustls::ServerConnection::new(cfg).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    handle(&mut tls, st)?;
    tls.conn.send_close_notify();
    tls.flush()
}

/// The last chunk of a chunked response.
fn end(stream: &mut impl Write) -> std::io::Result<()> {
    write!(stream, "0\r\n\r\n")?;
    stream.flush()
}

fn handle<S: Read + Write>(stream: &mut S, st: &(Mutex<State>, Condvar)) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut content_length = 0usize;
    let mut content_type = String::new();
    let mut authorization = String::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "content-length" => content_length = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = v.trim().to_owned(),
                "authorization" => authorization = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    // Nothing more is read: one request per connection.
    drop(reader);
    let (path, params) = query(&target);
    {
        let mut s = st.0.lock().unwrap();
        s.requests.push(format!("{method} {target}"));
        s.authorizations.push(authorization);
        if s.failing {
            drop(s);
            return respond(
                stream,
                500,
                &status_json(500, "InternalError", "etcdserver: request timed out"),
            );
        }
        let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
        if s.forbid_watch && watching {
            drop(s);
            return respond(
                stream,
                403,
                &status_json(
                    403,
                    "Forbidden",
                    "User \"system:serviceaccount:dsrgate:dsrgate\" cannot watch resource",
                ),
            );
        }
    }

    if method == "PATCH" {
        let (lock, cv) = st;
        let mut s = lock.lock().unwrap();
        while s.hang_patches && !s.shutdown {
            s = cv.wait(s).unwrap();
        }
        drop(s);
        // /api/v1/namespaces/{ns}/services/{name}/status
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if let ["api", "v1", "namespaces", ns, "services", name, "status"] = segs[..] {
            let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let (lock, cv) = st;
            let mut s = lock.lock().unwrap();
            s.patches.push((path.clone(), content_type, patch.clone()));
            let key = format!("{ns}/{name}");
            let Some(mut obj) = s
                .collections
                .get(&Kind::Service)
                .and_then(|c| c.objects.get(&key))
                .cloned()
            else {
                drop(s);
                return respond(
                    stream,
                    404,
                    &status_json(404, "NotFound", &format!("services \"{name}\" not found")),
                );
            };
            // The status subresource ignores everything but status.
            if let Some(status) = patch.get("status") {
                merge_patch(&mut obj["status"], status);
            }
            s.rv += 1;
            let rv = s.rv;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            let c = s.collections.entry(Kind::Service).or_default();
            c.objects.insert(key, obj.clone());
            c.events.push((rv, "MODIFIED", obj.clone()));
            cv.notify_all();
            drop(s);
            return respond(stream, 200, &obj);
        }
        return respond(stream, 404, &status_json(404, "NotFound", "not found"));
    }
    if method != "GET" {
        return respond(
            stream,
            405,
            &status_json(405, "MethodNotAllowed", "method not allowed"),
        );
    }
    let Some(kind) = Kind::of_path(&path) else {
        return respond(
            stream,
            404,
            &status_json(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        let s = st.0.lock().unwrap();
        let items: Vec<Value> = s
            .collections
            .get(&kind)
            .map(|c| {
                c.objects
                    .values()
                    .filter(|o| selected(o, &params))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .map(|mut o| {
                // List items carry no kind/apiVersion in real responses.
                let m = o.as_object_mut().unwrap();
                m.remove("kind");
                m.remove("apiVersion");
                o
            })
            .collect();
        let list = json!({"kind": format!("{}List", kind.kind()), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": s.rv.to_string()}, "items": items});
        drop(s);
        return respond(stream, 200, &list);
    }

    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
    let send = |stream: &mut S, ev: &Value| -> std::io::Result<()> {
        let line = format!("{ev}\n");
        write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
        stream.flush()
    };
    let (lock, cv) = st;
    let mut s = lock.lock().unwrap();
    if from < s.compacted {
        let gone = status_json(
            410,
            "Expired",
            &format!("too old resource version: {from} ({})", s.compacted),
        );
        drop(s);
        send(stream, &json!({"type": "ERROR", "object": gone}))?;
        return end(stream);
    }
    if s.hang_watches {
        stream.flush()?;
        while !s.shutdown {
            s = cv.wait(s).unwrap();
        }
        return Ok(());
    }
    let generation = s.generation;
    // As the API server does, the watch ends after `timeoutSeconds` (0 or none: never here).
    let ends = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .filter(|&t| t > 0)
        .map(|t| std::time::Instant::now() + Duration::from_secs(t));
    let mut cursor = from;
    loop {
        // A dropped stream delivers nothing more; the client resumes from its cursor.
        let timed_out = ends.is_some_and(|t| std::time::Instant::now() >= t);
        if s.shutdown || s.generation != generation || timed_out {
            drop(s);
            return end(stream);
        }
        let pending: Vec<(u64, &'static str, Value)> = s
            .collections
            .get(&kind)
            .map(|c| {
                c.events
                    .iter()
                    .filter(|(rv, ty, o)| {
                        *rv > cursor && (*ty == "BOOKMARK" || selected(o, &params))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if !pending.is_empty() {
            drop(s);
            for (rv, ty, obj) in &pending {
                send(stream, &json!({"type": ty, "object": obj}))?;
                cursor = *rv;
            }
            s = lock.lock().unwrap();
            continue;
        }
        s = cv.wait_timeout(s, Duration::from_millis(100)).unwrap().0;
    }
}
