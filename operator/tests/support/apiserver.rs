//! A small Kubernetes API server double that speaks the REST wire protocol, for tests only.
//!
//! What it does, as the real one does: GET of one object, LIST (with `labelSelector`) and
//! WATCH (from a `resourceVersion`, newline-delimited JSON events) of namespaced and
//! all-namespace collections; POST (409 AlreadyExists), PUT (409 Conflict on a stale
//! `resourceVersion`), PATCH as server-side apply (creating when absent), JSON merge and
//! strategic merge (treated as JSON merge); the `status` subresource (writes to the object
//! leave status alone, writes to `/status` change only status); `generation` bumped on spec
//! changes; DELETE with garbage collection of objects whose owners are all gone; `/apis`
//! listing the API groups it was told exist.
//!
//! What it does not: field ownership between several appliers (an apply replaces the
//! top-level fields it names), admission, schema validation, pagination.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, Infallible>;

/// Where an object lives: (collection `group/version/plural`, namespace, name).
type Key = (String, String, String);

#[derive(Clone, Debug)]
struct WatchEvent {
    resource_version: u64,
    collection: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    next_uid: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<WatchEvent>,
    groups: Vec<String>,
}

/// A running double; stops when dropped.
pub struct ApiServer {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<()>,
    task: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status_body(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A request path taken apart.
struct Target {
    collection: String,
    /// `group/version` as `apiVersion` spells it.
    api_version: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
            (Some((*namespace).to_owned()), rest)
        }
        rest => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    let api_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(Target {
        collection: format!("{group}/{version}/{plural}"),
        api_version,
        namespace,
        name,
        status,
    })
}

fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Equality-based label selectors (`a=b,c=d`), which is what the operator uses.
fn matches_labels(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector
        .split(',')
        .all(|requirement| match requirement.split_once('=') {
            Some((key, value)) => {
                object["metadata"]["labels"][key.trim_end_matches('=')].as_str()
                    == Some(value.trim_start_matches('='))
            }
            None => object["metadata"]["labels"].get(requirement).is_some(),
        })
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// Removes a `status: null` left by copying the status of an object that had none.
fn drop_null_status(object: &mut Value) {
    if object["status"].is_null()
        && let Some(map) = object.as_object_mut()
    {
        map.remove("status");
    }
}

/// The part of an object whose change bumps `generation`.
fn spec_part(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    copy
}

impl State {
    fn record(&mut self, kind: &'static str, key: &Key, object: Value) {
        self.history.push(WatchEvent {
            resource_version: self.resource_version,
            collection: key.0.clone(),
            namespace: key.1.clone(),
            kind,
            object,
        });
    }

    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn create(&mut self, key: Key, mut object: Value) -> Value {
        let rv = self.bump();
        self.next_uid += 1;
        let metadata = &mut object["metadata"];
        metadata["name"] = json!(key.2);
        if !key.1.is_empty() {
            metadata["namespace"] = json!(key.1);
        }
        metadata["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", self.next_uid));
        metadata["resourceVersion"] = json!(rv);
        metadata["generation"] = json!(1);
        metadata["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        self.objects.insert(key.clone(), object.clone());
        self.record("ADDED", &key, object.clone());
        self.collect_garbage();
        object
    }

    /// Stores `next` over the object at `key`, keeping identity and stamping versions.
    fn update(&mut self, key: &Key, mut next: Value) -> Value {
        let Some(previous) = self.objects.get(key).cloned() else {
            return next;
        };
        if next == previous {
            return previous;
        }
        let generation = previous["metadata"]["generation"].as_i64().unwrap_or(1);
        let generation = if spec_part(&next) == spec_part(&previous) {
            generation
        } else {
            generation + 1
        };
        for field in ["uid", "creationTimestamp", "name", "namespace"] {
            next["metadata"][field] = previous["metadata"][field].clone();
        }
        next["metadata"]["generation"] = json!(generation);
        next["metadata"]["resourceVersion"] = json!(self.bump());
        self.objects.insert(key.clone(), next.clone());
        self.record("MODIFIED", key, next.clone());
        self.collect_garbage();
        next
    }

    fn delete(&mut self, key: &Key) -> Option<Value> {
        let object = self.objects.remove(key)?;
        self.bump();
        self.record("DELETED", key, object.clone());
        self.collect_garbage();
        Some(object)
    }

    /// Deletes objects all of whose owners are gone, as the garbage collector does after any
    /// change (background cascading deletion).
    fn collect_garbage(&mut self) {
        loop {
            let uids: std::collections::HashSet<String> = self
                .objects
                .values()
                .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
                .collect();
            let orphan = self.objects.iter().find_map(|(key, object)| {
                let owners = object["metadata"]["ownerReferences"].as_array()?;
                let all_gone = !owners.is_empty()
                    && owners
                        .iter()
                        .all(|o| o["uid"].as_str().is_none_or(|uid| !uids.contains(uid)));
                all_gone.then(|| key.clone())
            });
            match orphan {
                Some(key) => {
                    let Some(object) = self.objects.remove(&key) else {
                        return;
                    };
                    self.bump();
                    self.record("DELETED", &key, object);
                }
                None => return,
            }
        }
    }
}

impl ApiServer {
    /// Starts a double that says the API groups in `groups` exist (besides the built-in ones).
    pub async fn start(groups: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API double");
        let address = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..State::default()
        }));
        let (changes, _) = broadcast::channel(1024);
        let task = {
            let (state, changes) = (state.clone(), changes.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (state, changes) = (state.clone(), changes.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |request| {
                            let (state, changes) = (state.clone(), changes.clone());
                            async move { Ok::<_, Infallible>(handle(request, state, changes).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Self {
            address,
            state,
            changes,
            task,
        }
    }

    /// A client of this double.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.address).parse().expect("URL");
        let config = kube::Config::new(url);
        kube::Client::try_from(config).expect("client")
    }

    /// The stored object, if any (`collection` is `group/version/plural`, `/v1/configmaps`).
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().expect("state");
        state
            .objects
            .get(&(collection.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Every stored object of a collection in a namespace.
    pub fn list(&self, collection: &str, namespace: &str) -> Vec<Value> {
        let state = self.state.lock().expect("state");
        state
            .objects
            .iter()
            .filter(|((c, ns, _), _)| c == collection && ns == namespace)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Plays the Deployment controller: every Deployment of `namespace` reports all its
    /// replicas available.
    pub fn make_deployments_available(&self, namespace: &str) {
        let mut state = self.state.lock().expect("state");
        let keys: Vec<Key> = state
            .objects
            .keys()
            .filter(|(c, ns, _)| c == "apps/v1/deployments" && ns == namespace)
            .cloned()
            .collect();
        for key in keys {
            let Some(mut object) = state.objects.get(&key).cloned() else {
                continue;
            };
            let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
            let generation = object["metadata"]["generation"].clone();
            object["status"] = json!({
                "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
                "updatedReplicas": replicas, "observedGeneration": generation,
            });
            state.update(&key, object);
        }
        drop(state);
        let _ = self.changes.send(());
    }
}

async fn handle(
    request: Request<Incoming>,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<()>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/apis" {
        let groups = state.lock().expect("state").groups.clone();
        let groups: Vec<Value> = groups
            .iter()
            .map(|g| json!({"name": g, "versions": [{"groupVersion": format!("{g}/v1"), "version": "v1"}],
                "preferredVersion": {"groupVersion": format!("{g}/v1"), "version": "v1"}}))
            .collect();
        return respond(
            StatusCode::OK,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        );
    }
    let Some(target) = parse_path(&path) else {
        return status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route {path}"),
        );
    };
    let method = request.method().clone();
    let params = query(&request);
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return status_body(StatusCode::BAD_REQUEST, "BadRequest", error.to_string()),
    };
    let parsed: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let response = match (&method, &target.name) {
        (&Method::GET, None) if params.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            return watch(&target, &params, state, changes);
        }
        (&Method::GET, None) => list(&target, &params, &state),
        (&Method::GET, Some(name)) => {
            let state = state.lock().expect("state");
            match state.objects.get(&key(&target, name)) {
                Some(object) => respond(StatusCode::OK, object),
                None => not_found(&target, name),
            }
        }
        (&Method::POST, None) => match parsed {
            Some(object) => create(&target, object, &state),
            None => status_body(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "body is not JSON".into(),
            ),
        },
        (&Method::PUT, Some(name)) => match parsed {
            Some(object) => replace(&target, name, object, &state),
            None => status_body(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "body is not JSON".into(),
            ),
        },
        (&Method::PATCH, Some(name)) => match parsed {
            Some(patch) => patch_object(&target, name, &content_type, patch, &state),
            None => status_body(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "body is not JSON".into(),
            ),
        },
        (&Method::DELETE, Some(name)) => {
            let mut state = state.lock().expect("state");
            match state.delete(&key(&target, name)) {
                Some(object) => respond(StatusCode::OK, &object),
                None => not_found(&target, name),
            }
        }
        _ => status_body(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path}"),
        ),
    };
    let _ = changes.send(());
    response
}

fn key(target: &Target, name: &str) -> Key {
    (
        target.collection.clone(),
        target.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    )
}

fn not_found(target: &Target, name: &str) -> Response<Body> {
    status_body(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} {name:?} not found", target.collection),
    )
}

fn list(target: &Target, params: &HashMap<String, String>, state: &Mutex<State>) -> Response<Body> {
    let state = state.lock().expect("state");
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|((c, ns, _), _)| {
            *c == target.collection && target.namespace.as_ref().is_none_or(|n| n == ns)
        })
        .filter(|(_, o)| matches_labels(o, params.get("labelSelector")))
        .map(|(_, o)| o.clone())
        .collect();
    respond(
        StatusCode::OK,
        &json!({"apiVersion": target.api_version, "kind": "List",
            "metadata": {"resourceVersion": state.resource_version.to_string()}, "items": items}),
    )
}

fn watch(
    target: &Target,
    params: &HashMap<String, String>,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<()>,
) -> Response<Body> {
    let mut since: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        params
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290),
    );
    let selector = params.get("labelSelector").cloned();
    let (collection, namespace) = (target.collection.clone(), target.namespace.clone());
    let (sender, mut receiver) = mpsc::channel::<Bytes>(64);
    let mut notified = changes.subscribe();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let events: Vec<WatchEvent> = {
                let state = state.lock().expect("state");
                state
                    .history
                    .iter()
                    .filter(|e| e.resource_version > since && e.collection == collection)
                    .filter(|e| namespace.as_ref().is_none_or(|n| *n == e.namespace))
                    .cloned()
                    .collect()
            };
            for event in events {
                since = event.resource_version;
                if !matches_labels(&event.object, selector.as_ref()) {
                    continue;
                }
                let line = format!("{}\n", json!({"type": event.kind, "object": event.object}));
                if sender.send(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = notified.recv() => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = sender.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(Frame::data(b))))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn create(target: &Target, object: Value, state: &Mutex<State>) -> Response<Body> {
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        return status_body(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name is required".into(),
        );
    };
    let mut state = state.lock().expect("state");
    let key = key(target, &name);
    if state.objects.contains_key(&key) {
        return status_body(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} {name:?} already exists", target.collection),
        );
    }
    let created = state.create(key, object);
    respond(StatusCode::CREATED, &created)
}

fn stale(current: &Value, incoming: &Value) -> bool {
    incoming["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str())
}

fn replace(target: &Target, name: &str, incoming: Value, state: &Mutex<State>) -> Response<Body> {
    let mut state = state.lock().expect("state");
    let key = key(target, name);
    let Some(current) = state.objects.get(&key).cloned() else {
        return not_found(target, name);
    };
    if stale(&current, &incoming) {
        return status_body(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                target.collection
            ),
        );
    }
    let next = if target.status {
        let mut next = current.clone();
        next["status"] = incoming["status"].clone();
        next
    } else {
        let mut next = incoming;
        next["status"] = current["status"].clone();
        drop_null_status(&mut next);
        next
    };
    let updated = state.update(&key, next);
    respond(StatusCode::OK, &updated)
}

fn patch_object(
    target: &Target,
    name: &str,
    content_type: &str,
    patch: Value,
    state: &Mutex<State>,
) -> Response<Body> {
    let mut state = state.lock().expect("state");
    let key = key(target, name);
    let current = state.objects.get(&key).cloned();
    let is_apply = content_type.starts_with("application/apply-patch");
    let Some(current) = current else {
        if is_apply && !target.status {
            let created = state.create(key, patch);
            return respond(StatusCode::CREATED, &created);
        }
        return not_found(target, name);
    };
    if stale(&current, &patch) {
        return status_body(
            StatusCode::CONFLICT,
            "Conflict",
            format!("{} {name:?} has been modified", target.collection),
        );
    }
    let mut next = current.clone();
    if target.status {
        if is_apply {
            next["status"] = patch["status"].clone();
        } else {
            merge(&mut next["status"], &patch["status"]);
        }
    } else if is_apply {
        // One field manager: the applied object's top-level fields replace the stored ones.
        if let (Some(next_map), Some(patch_map)) = (next.as_object_mut(), patch.as_object()) {
            for (field, value) in patch_map {
                match field.as_str() {
                    "status" => {}
                    "metadata" => {
                        for part in ["labels", "annotations", "ownerReferences", "finalizers"] {
                            if let Some(value) = value.get(part) {
                                next_map.entry("metadata").or_insert(json!({}))[part] =
                                    value.clone();
                            }
                        }
                    }
                    _ => {
                        next_map.insert(field.clone(), value.clone());
                    }
                }
            }
        }
    } else if content_type.contains("merge-patch") {
        let status = next["status"].clone();
        merge(&mut next, &patch);
        next["status"] = status;
        drop_null_status(&mut next);
    } else {
        return status_body(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            content_type.to_owned(),
        );
    }
    let updated = state.update(&key, next);
    respond(StatusCode::OK, &updated)
}
