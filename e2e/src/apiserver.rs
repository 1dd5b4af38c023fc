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
//! Field ownership as server-side apply keeps it: each field manager owns the leaf fields
//! it applied or changed (lists are atomic); an apply merges into the object, removes the
//! fields its manager applied before and no longer applies (unless another manager owns
//! them), and is refused with 409 Conflict when, without `force`, it would change a field
//! another manager owns. That is what makes two appliers of one Lease contend as they do on
//! a real API server.
//!
//! What it does not: admission, schema validation, pagination, list-map keys (lists are
//! owned whole), `managedFields` in the returned objects.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// One change, as every watcher of its collection will send it.
#[derive(Clone, Debug)]
struct WatchEvent {
    resource_version: u64,
    collection: String,
    namespace: String,
    /// The object's labels, for label-selected watches.
    labels: Value,
    /// The serialized `{"type", "object"}` line, made once for every watcher.
    line: Bytes,
}

/// Leaf fields (JSON pointers) each field manager owns in one object.
type Ownership = BTreeMap<String, BTreeSet<String>>;

#[derive(Default)]
struct State {
    resource_version: u64,
    next_uid: u64,
    objects: BTreeMap<Key, Value>,
    owners: HashMap<Key, Ownership>,
    /// The uid of every stored object, for garbage collection.
    uids: HashSet<String>,
    /// Every change in resource-version order (watchers binary-search their start).
    history: Vec<WatchEvent>,
    groups: Vec<String>,
    /// Requests served, for the benchmark's measure of the double itself.
    requests: u64,
    /// While true, requests go unanswered, as across a network partition.
    partitioned: bool,
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

/// Equality-based label selectors (`a=b,c=d`), which is what the operator uses, against
/// an object's `metadata.labels`.
fn matches_labels(labels: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector
        .split(',')
        .all(|requirement| match requirement.split_once('=') {
            Some((key, value)) => {
                labels[key.trim_end_matches('=')].as_str() == Some(value.trim_start_matches('='))
            }
            None => labels.get(requirement).is_some(),
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

/// Fields that identify an object or are the server's: nobody owns them.
const UNOWNED: [&str; 9] = [
    "/apiVersion",
    "/kind",
    "/metadata/name",
    "/metadata/namespace",
    "/metadata/uid",
    "/metadata/resourceVersion",
    "/metadata/generation",
    "/metadata/creationTimestamp",
    "/metadata/managedFields",
];

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The leaf fields of `value` as JSON pointers; lists and empty maps are leaves.
fn leaf_fields(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                leaf_fields(child, &format!("{prefix}/{}", escape_pointer(key)), out);
            }
        }
        _ if !prefix.is_empty() => {
            out.insert(prefix.to_owned());
        }
        _ => {}
    }
}

/// The fields a write to the object (`status` false) or its status subresource touches.
fn owned_fields(value: &Value, status: bool) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    leaf_fields(value, "", &mut all);
    all.into_iter()
        .filter(|field| !UNOWNED.contains(&field.as_str()))
        .filter(|field| (field == "/status" || field.starts_with("/status/")) == status)
        .collect()
}

/// Removes the field at a JSON pointer, if present.
fn remove_field(value: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(map)) = value.pointer_mut(parent) {
        map.remove(&key);
    }
}

/// Merges an applied configuration into an object: maps merge, lists and scalars replace.
fn apply_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(target), Value::Object(applied)) => {
            for (key, value) in applied {
                apply_merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}

/// Who wrote and how, from the query string.
struct Writer {
    manager: String,
    force: bool,
}

impl Writer {
    fn from_query(params: &HashMap<String, String>) -> Self {
        Self {
            manager: params
                .get("fieldManager")
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            force: params.get("force").is_some_and(|f| f == "true"),
        }
    }
}

impl State {
    fn record(&mut self, kind: &'static str, key: &Key, object: &Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.history.push(WatchEvent {
            resource_version: self.resource_version,
            collection: key.0.clone(),
            namespace: key.1.clone(),
            labels: object["metadata"]["labels"].clone(),
            line: Bytes::from(line),
        });
    }

    /// Fields of `fields` whose value `applied` would change and that a manager other than
    /// `manager` owns, as "manager: field".
    fn conflicts(
        &self,
        key: &Key,
        manager: &str,
        fields: &BTreeSet<String>,
        current: &Value,
        applied: &Value,
    ) -> Vec<String> {
        let Some(owners) = self.owners.get(key) else {
            return Vec::new();
        };
        owners
            .iter()
            .filter(|(owner, _)| owner.as_str() != manager)
            .flat_map(|(owner, owned)| {
                owned
                    .intersection(fields)
                    .filter(|field| current.pointer(field) != applied.pointer(field))
                    .map(move |field| format!("{owner}: {field}"))
            })
            .collect()
    }

    /// Records that `manager` applied exactly `fields` (of one scope: object or status):
    /// it owns them, others lose the ones whose value changed. Returns the fields it owned
    /// before and no longer applies that nobody else owns (the apply removes them).
    fn take_applied(
        &mut self,
        key: &Key,
        manager: &str,
        fields: &BTreeSet<String>,
        status: bool,
        changed: &BTreeSet<String>,
    ) -> Vec<String> {
        let owners = self.owners.entry(key.clone()).or_default();
        let previous = owners.remove(manager).unwrap_or_default();
        for owned in owners.values_mut() {
            owned.retain(|field| !changed.contains(field));
        }
        let dropped: Vec<String> = previous
            .iter()
            .filter(|field| (*field == "/status" || field.starts_with("/status/")) == status)
            .filter(|field| !fields.contains(*field))
            .filter(|field| !owners.values().any(|owned| owned.contains(*field)))
            .cloned()
            .collect();
        let mut mine: BTreeSet<String> = previous
            .into_iter()
            .filter(|field| (field == "/status" || field.starts_with("/status/")) != status)
            .collect();
        mine.extend(fields.iter().cloned());
        owners.insert(manager.to_owned(), mine);
        owners.retain(|_, owned| !owned.is_empty());
        dropped
    }

    /// Records an update (PUT, merge patch) by `manager` that changed `changed`: nobody
    /// else owns those now, and `manager` owns the ones it `set` (removed fields have no
    /// owner).
    fn take_updated(
        &mut self,
        key: &Key,
        manager: &str,
        changed: &BTreeSet<String>,
        set: BTreeSet<String>,
    ) {
        let owners = self.owners.entry(key.clone()).or_default();
        for owned in owners.values_mut() {
            owned.retain(|field| !changed.contains(field));
        }
        owners.entry(manager.to_owned()).or_default().extend(set);
        owners.retain(|_, owned| !owned.is_empty());
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
        let uid = format!("00000000-0000-0000-0000-{:012}", self.next_uid);
        self.uids.insert(uid.clone());
        metadata["uid"] = json!(uid);
        metadata["resourceVersion"] = json!(rv);
        metadata["generation"] = json!(1);
        metadata["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        self.objects.insert(key.clone(), object.clone());
        self.record("ADDED", &key, &object);
        self.collect_if_orphaned(&key);
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
        self.record("MODIFIED", key, &next);
        self.collect_if_orphaned(key);
        next
    }

    fn delete(&mut self, key: &Key) -> Option<Value> {
        let object = self.objects.remove(key)?;
        self.owners.remove(key);
        if let Some(uid) = object["metadata"]["uid"].as_str() {
            self.uids.remove(uid);
        }
        self.bump();
        self.record("DELETED", key, &object);
        self.collect_garbage();
        Some(object)
    }

    /// Whether every owner `object` names is gone (an object with none is not owned).
    fn orphaned(&self, object: &Value) -> bool {
        object["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|owners| {
                !owners.is_empty()
                    && owners
                        .iter()
                        .all(|o| o["uid"].as_str().is_none_or(|uid| !self.uids.contains(uid)))
            })
    }

    /// Deletes `key` if its owners are all gone, as the garbage collector does after a
    /// write (background cascading deletion).
    fn collect_if_orphaned(&mut self, key: &Key) {
        if self.objects.get(key).is_some_and(|o| self.orphaned(o)) {
            self.delete(key);
        }
    }

    /// After a deletion: deletes what it owned alone, and so on down.
    fn collect_garbage(&mut self) {
        let orphans: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, object)| self.orphaned(object))
            .map(|(key, _)| key.clone())
            .collect();
        for key in orphans {
            self.delete(&key);
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
        in_namespace(&state.objects, collection, namespace)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// How many objects of a collection in a namespace satisfy `check` (no copies).
    pub fn count(
        &self,
        collection: &str,
        namespace: &str,
        check: impl Fn(&Value) -> bool,
    ) -> usize {
        let state = self.state.lock().expect("state");
        in_namespace(&state.objects, collection, namespace)
            .filter(|(_, o)| check(o))
            .count()
    }

    /// Cuts every client off (requests hang, unanswered) or lets them through again.
    pub fn set_partitioned(&self, partitioned: bool) {
        self.state.lock().expect("state").partitioned = partitioned;
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.state.lock().expect("state").requests
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

/// The objects of one collection in one namespace, from an ordered range of the map.
fn in_namespace<'a>(
    objects: &'a BTreeMap<Key, Value>,
    collection: &str,
    namespace: &str,
) -> impl Iterator<Item = (&'a Key, &'a Value)> {
    let start: Key = (collection.to_owned(), namespace.to_owned(), String::new());
    let (collection, namespace) = (collection.to_owned(), namespace.to_owned());
    objects
        .range(start..)
        .take_while(move |((c, ns, _), _)| *c == collection && *ns == namespace)
}

async fn handle(
    request: Request<Incoming>,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<()>,
) -> Response<Body> {
    while state.lock().expect("state").partitioned {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let writer = Writer::from_query(&params);
    state.lock().expect("state").requests += 1;
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
            Some(object) => create(&target, object, &writer, &state),
            None => status_body(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "body is not JSON".into(),
            ),
        },
        (&Method::PUT, Some(name)) => match parsed {
            Some(object) => replace(&target, name, object, &writer, &state),
            None => status_body(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "body is not JSON".into(),
            ),
        },
        (&Method::PATCH, Some(name)) => match parsed {
            Some(patch) => patch_object(&target, name, &content_type, patch, &writer, &state),
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
    if method != Method::GET {
        let _ = changes.send(());
    }
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
        .filter(|(_, o)| matches_labels(&o["metadata"]["labels"], params.get("labelSelector")))
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
            let lines: Vec<Bytes> = {
                let state = state.lock().expect("state");
                let start = state
                    .history
                    .partition_point(|e| e.resource_version <= since);
                since = state.resource_version;
                state.history[start..]
                    .iter()
                    .filter(|e| e.collection == collection)
                    .filter(|e| namespace.as_ref().is_none_or(|n| *n == e.namespace))
                    .filter(|e| matches_labels(&e.labels, selector.as_ref()))
                    .map(|e| e.line.clone())
                    .collect()
            };
            for line in lines {
                if sender.send(line).await.is_err() {
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

fn create(target: &Target, object: Value, writer: &Writer, state: &Mutex<State>) -> Response<Body> {
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
    let fields = owned_fields(&object, false);
    state.take_updated(&key, &writer.manager, &fields, fields.clone());
    let created = state.create(key, object);
    respond(StatusCode::CREATED, &created)
}

fn stale(current: &Value, incoming: &Value) -> bool {
    incoming["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str())
}

fn conflict(target: &Target, name: &str) -> Response<Body> {
    status_body(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
            target.collection
        ),
    )
}

/// The fields of the written scope whose value differs between two versions.
fn changed_fields(before: &Value, after: &Value, status: bool) -> BTreeSet<String> {
    let mut fields = owned_fields(before, status);
    fields.extend(owned_fields(after, status));
    fields
        .into_iter()
        .filter(|field| before.pointer(field) != after.pointer(field))
        .collect()
}

/// Stores an update (PUT or merge patch) and hands the fields it changed to its writer.
fn store_update(
    state: &mut State,
    key: &Key,
    current: &Value,
    next: Value,
    writer: &Writer,
    status: bool,
) -> Response<Body> {
    let changed = changed_fields(current, &next, status);
    let set: BTreeSet<String> = changed
        .iter()
        .filter(|field| next.pointer(field).is_some())
        .cloned()
        .collect();
    state.take_updated(key, &writer.manager, &changed, set);
    let updated = state.update(key, next);
    respond(StatusCode::OK, &updated)
}

fn replace(
    target: &Target,
    name: &str,
    incoming: Value,
    writer: &Writer,
    state: &Mutex<State>,
) -> Response<Body> {
    let mut state = state.lock().expect("state");
    let key = key(target, name);
    let Some(current) = state.objects.get(&key).cloned() else {
        return not_found(target, name);
    };
    if stale(&current, &incoming) {
        return conflict(target, name);
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
    store_update(&mut state, &key, &current, next, writer, target.status)
}

/// Server-side apply of `applied` over `current` by `writer`.
fn apply(
    state: &mut State,
    target: &Target,
    key: &Key,
    current: Value,
    applied: &Value,
    writer: &Writer,
) -> Response<Body> {
    let fields = owned_fields(applied, target.status);
    if !writer.force {
        let conflicts = state.conflicts(key, &writer.manager, &fields, &current, applied);
        if !conflicts.is_empty() {
            return status_body(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts.join(", ")
                ),
            );
        }
    }
    let mut next = current.clone();
    let mut scope = Value::Object(serde_json::Map::new());
    for field in &fields {
        if let Some(value) = applied.pointer(field) {
            set_field(&mut scope, field, value.clone());
        }
    }
    apply_merge(&mut next, &scope);
    let changed: BTreeSet<String> = fields
        .iter()
        .filter(|field| current.pointer(field) != next.pointer(field))
        .cloned()
        .collect();
    for dropped in state.take_applied(key, &writer.manager, &fields, target.status, &changed) {
        remove_field(&mut next, &dropped);
    }
    drop_null_status(&mut next);
    let updated = state.update(key, next);
    respond(StatusCode::OK, &updated)
}

/// Sets the field at a JSON pointer, creating the maps on the way.
fn set_field(root: &mut Value, pointer: &str, value: Value) {
    let mut node = root;
    let parts: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, parents)) = parts.split_last() else {
        return;
    };
    for part in parents {
        if !node.is_object() {
            *node = Value::Object(serde_json::Map::new());
        }
        node = node
            .as_object_mut()
            .map(|map| map.entry(part.clone()).or_insert(Value::Null))
            .expect("just made a map");
    }
    if !node.is_object() {
        *node = Value::Object(serde_json::Map::new());
    }
    if let Some(map) = node.as_object_mut() {
        map.insert(last.clone(), value);
    }
}

fn patch_object(
    target: &Target,
    name: &str,
    content_type: &str,
    patch: Value,
    writer: &Writer,
    state: &Mutex<State>,
) -> Response<Body> {
    let mut state = state.lock().expect("state");
    let key = key(target, name);
    let current = state.objects.get(&key).cloned();
    let is_apply = content_type.starts_with("application/apply-patch");
    let Some(current) = current else {
        if is_apply && !target.status {
            let mut object = Value::Object(serde_json::Map::new());
            let fields = owned_fields(&patch, false);
            for field in &fields {
                if let Some(value) = patch.pointer(field) {
                    set_field(&mut object, field, value.clone());
                }
            }
            object["apiVersion"] = patch["apiVersion"].clone();
            object["kind"] = patch["kind"].clone();
            state.take_applied(&key, &writer.manager, &fields, false, &fields);
            let created = state.create(key, object);
            return respond(StatusCode::CREATED, &created);
        }
        return not_found(target, name);
    };
    if stale(&current, &patch) {
        return conflict(target, name);
    }
    if is_apply {
        return apply(&mut state, target, &key, current, &patch, writer);
    }
    if !content_type.contains("merge-patch") {
        return status_body(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            content_type.to_owned(),
        );
    }
    // Strategic merge is treated as JSON merge: enough for the maps and scalars written here.
    let mut next = current.clone();
    if target.status {
        merge(&mut next["status"], &patch["status"]);
    } else {
        let status = next["status"].clone();
        merge(&mut next, &patch);
        next["status"] = status;
    }
    drop_null_status(&mut next);
    store_update(&mut state, &key, &current, next, writer, target.status)
}

/// A kubeconfig that points at the double (plain HTTP, no credentials).
pub fn write_kubeconfig(dir: &Path, address: SocketAddr) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: http://{address}\nusers:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: nobody\ncurrent-context: double\n"
    );
    std::fs::write(&path, text).expect("write the kubeconfig");
    path
}
