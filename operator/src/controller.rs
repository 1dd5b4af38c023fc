//! The three controllers (PrintQueue, Printer, AccountingPolicy) on kube-runtime.
//!
//! A queue's reconcile plans its namespace's shards, server-side-applies its shard's
//! objects and the namespace's Service, removes shards the plan no longer has, and writes
//! the queue's status. Any change to a queue, or to a Printer, policy or shard Deployment a
//! queue depends on, re-reconciles the queues concerned (watch relations, not polling).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use printfleet_crds::{AccountingPolicy, PrintQueue, Printer};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::desired::{
    FIELD_MANAGER, Inventory, SERVICE_NAME, SHARD_LABEL, SpoolerSettings, queue_endpoint,
    queue_owners, service_monitor, shard_objects, submission_service,
};
use crate::metrics::Metrics;
use crate::probe::{self, probe};
use crate::shard::{ShardSettings, plan, shard_count, shard_name, shard_of};
use crate::status::{policy_status, printer_status, queue_status};
use printfleet_crds::queue::PrintQueueStatus;

/// What can make a reconcile fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("rendering the spooler configuration: {0}")]
    Render(#[from] serde_yaml::Error),
    #[error("object has no namespace")]
    NoNamespace,
    #[error("a cache stopped before it was filled")]
    CacheGone,
    #[error("serializing desired objects: {0}")]
    Fingerprint(serde_json::Error),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Render(_) => "render",
            Self::NoNamespace => "no_namespace",
            Self::CacheGone => "cache_gone",
            Self::Fingerprint(_) => "fingerprint",
        }
    }
}

/// The operator's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub shards: ShardSettings,
    pub spooler: SpoolerSettings,
    /// How often each printer is probed.
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// Whether `monitoring.coreos.com` ServiceMonitors are applied.
    pub service_monitors: bool,
    /// Name of this operator instance in Events (the pod name).
    pub instance: String,
    /// `host:port` where the operator asks spooler pods for queue depths instead of each
    /// namespace's submission Service by its cluster DNS name (an operator run outside
    /// the cluster, in development).
    pub spooler_address: Option<String>,
}

impl Settings {
    /// The URI the operator reads `queue`'s depth from.
    fn queue_uri_for_operator(&self, namespace: &str, queue: &str) -> String {
        match &self.spooler_address {
            Some(address) => format!("ipp://{address}/ipp/print/{queue}"),
            None => queue_endpoint(namespace, queue),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            shards: ShardSettings::default(),
            spooler: SpoolerSettings::default(),
            probe_interval: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(5),
            service_monitors: false,
            instance: "printfleet-operator".into(),
            spooler_address: None,
        }
    }
}

/// State shared by every reconcile.
pub struct Context {
    client: Client,
    settings: Settings,
    metrics: Metrics,
    recorder: Recorder,
    printers: Store<Printer>,
    queues: Store<PrintQueue>,
    policies: Store<AccountingPolicy>,
    deployments: Store<Deployment>,
    applied: Arc<AppliedShards>,
    /// Consecutive failures per object, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// What was last applied for each shard (namespace, index), as a fingerprint of the
/// desired objects. An event on a shard's ConfigMap or Deployment forgets the shard, so
/// an edit by someone else is put back by the next reconcile. An event that arrives while
/// a reconcile is applying wins: that reconcile's fingerprint is not recorded.
#[derive(Default)]
pub struct AppliedShards {
    shards: Mutex<HashMap<(String, u32), AppliedShard>>,
}

#[derive(Default)]
struct AppliedShard {
    fingerprint: Option<u64>,
    /// Events seen about the shard's objects, to tell whether one came during an apply.
    events: u64,
}

/// The shard's event count when a reconcile decided to apply.
struct ApplyTicket(u64);

impl AppliedShards {
    /// Taken before deciding to apply: [`record`](Self::record) keeps the fingerprint only
    /// if no event came since.
    fn ticket(&self, shard: &(String, u32)) -> ApplyTicket {
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        ApplyTicket(shards.get(shard).map_or(0, |applied| applied.events))
    }

    fn unchanged(&self, shard: &(String, u32), fingerprint: u64) -> bool {
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards
            .get(shard)
            .is_some_and(|applied| applied.fingerprint == Some(fingerprint))
    }

    fn record(&self, shard: (String, u32), fingerprint: u64, ticket: ApplyTicket) {
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let applied = shards.entry(shard).or_default();
        if applied.events == ticket.0 {
            applied.fingerprint = Some(fingerprint);
        }
    }

    fn forget(&self, shard: &(String, u32)) {
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let applied = shards.entry(shard.clone()).or_default();
        applied.fingerprint = None;
        applied.events = applied.events.wrapping_add(1);
    }
}

/// A hash of the JSON form of `value`.
fn fingerprint<T: Serialize>(value: &T) -> Result<u64, Error> {
    use std::hash::{Hash, Hasher};
    let json = serde_json::to_vec(value).map_err(Error::Fingerprint)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut hasher);
    Ok(hasher.finish())
}

/// Delay before retrying an object that failed `failures` times in a row: 1 s doubling
/// up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let seconds = 1u64
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u64::MAX);
    Duration::from_secs(seconds.min(300))
}

impl Context {
    fn failed(&self, key: String) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        backoff(*count)
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Waits until every cache has its first full list: before that a Printer that exists
    /// would look missing.
    async fn caches_ready(&self) -> Result<(), Error> {
        cache_ready(&self.printers).await?;
        cache_ready(&self.policies).await?;
        cache_ready(&self.deployments).await
    }

    /// The printfleet objects of `namespace`, from the controllers' caches.
    fn inventory(&self, namespace: &str) -> Inventory {
        fn by_name<K: Resource<DynamicType = ()> + Clone>(
            store: &Store<K>,
            namespace: &str,
        ) -> std::collections::BTreeMap<String, K> {
            store
                .state()
                .iter()
                .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
                .map(|o| (o.name_any(), K::clone(o)))
                .collect()
        }
        Inventory {
            printers: by_name(&self.printers, namespace),
            queues: by_name(&self.queues, namespace),
            policies: by_name(&self.policies, namespace),
        }
    }
}

/// Waits for a store's first full list. kube-runtime's readiness signal keeps a single
/// waker, so of several reconciles (and the controller runners) waiting at once only the
/// last to poll is woken: re-poll on a short timer rather than rely on the wake-up.
async fn cache_ready<K>(store: &Store<K>) -> Result<(), Error>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(50), store.wait_until_ready()).await {
            Ok(result) => return result.map_err(|_| Error::CacheGone),
            Err(_) => continue,
        }
    }
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn object_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .patch(&object.name_any(), &apply_params(), &Patch::Apply(object))
        .await?)
}

/// Writes `status` to an object's status subresource, unless it already says that.
async fn apply_status<K, S>(
    client: &Client,
    object: &K,
    current: Option<&S>,
    status: S,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
    S: Serialize + PartialEq,
{
    if current == Some(&status) {
        return Ok(());
    }
    let namespace = object.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let dynamic = K::DynamicType::default();
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&dynamic),
        "kind": K::kind(&dynamic),
        "status": status,
    });
    api.patch_status(&object.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// Reconciles one queue: its shard, the namespace's Service, surplus shards, its status.
#[tracing::instrument(skip_all, fields(namespace = queue.namespace(), name = %queue.name_any()))]
pub async fn reconcile_queue(queue: Arc<PrintQueue>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("PrintQueue");
    let namespace = queue.namespace().ok_or(Error::NoNamespace)?;
    let name = queue.name_any();
    ctx.caches_ready().await?;
    let inventory = ctx.inventory(&namespace);
    let shards = plan(
        inventory.queues.keys().map(String::as_str),
        &ctx.settings.shards,
    );
    let count = u32::try_from(shards.len()).unwrap_or(u32::MAX);
    let shard = shard_of(&name, count);

    let objects = shard_objects(
        &namespace,
        shard,
        &shards,
        &inventory,
        &ctx.settings.shards,
        &ctx.settings.spooler,
    )?;
    let service = submission_service(&namespace, inventory.queues.values());
    let fingerprint = fingerprint(&(&objects, &service))?;
    let shard_key = (namespace.clone(), shard);
    // The queues of a shard all apply the same objects: once they are applied (and no
    // event about them came since), the others only read the Deployment from the cache.
    let ticket = ctx.applied.ticket(&shard_key);
    let cached = ctx
        .applied
        .unchanged(&shard_key, fingerprint)
        .then(|| {
            ctx.deployments
                .get(&ObjectRef::new(&shard_name(shard)).within(&namespace))
        })
        .flatten();
    let deployment = match cached {
        Some(deployment) => Deployment::clone(&deployment),
        None => {
            apply(&ctx.client, &namespace, &objects.service_account).await?;
            apply(&ctx.client, &namespace, &objects.role).await?;
            apply(&ctx.client, &namespace, &objects.role_binding).await?;
            apply(&ctx.client, &namespace, &objects.config_map).await?;
            let deployment = apply(&ctx.client, &namespace, &objects.deployment).await?;
            apply(&ctx.client, &namespace, &objects.pod_disruption_budget).await?;
            apply(&ctx.client, &namespace, &service).await?;
            if ctx.settings.service_monitors {
                apply_service_monitor(&ctx.client, &namespace, &inventory).await?;
            }
            delete_unplanned_shards(&ctx, &namespace, &shards).await?;
            ctx.applied.record(shard_key, fingerprint, ticket);
            deployment
        }
    };

    let resolution = inventory.resolve(&queue);
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas);
    let depth = match (&resolution, available) {
        (Ok(()), Some(available)) if available > 0 => {
            let uri = ctx.settings.queue_uri_for_operator(&namespace, &name);
            probe::queued_jobs(&uri, ctx.settings.probe_timeout).await
        }
        // No pod to ask.
        _ => None,
    };
    let status = PrintQueueStatus {
        depth,
        ..queue_status(&queue, &resolution, &namespace, shard, available, &now())
    };
    if let Err(unresolved) = &resolution {
        let ready = status.conditions.first();
        let changed = queue
            .status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .map(|c| &c.reason)
            != ready.map(|c| &c.reason);
        if changed && let Some(condition) = ready {
            publish(
                &ctx,
                &*queue,
                EventType::Warning,
                &condition.reason,
                format!("{unresolved:?}: {}", condition.message),
            )
            .await;
        }
    }
    apply_status(&ctx.client, &*queue, queue.status.as_ref(), status).await?;
    // Also how often the depth is read again.
    Ok(Action::requeue(ctx.settings.probe_interval))
}

async fn apply_service_monitor(
    client: &Client,
    namespace: &str,
    inventory: &Inventory,
) -> Result<(), Error> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        "ServiceMonitor",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let monitor = service_monitor(namespace, queue_owners(inventory.queues.values()));
    api.patch(SERVICE_NAME, &apply_params(), &Patch::Apply(&monitor))
        .await?;
    Ok(())
}

/// Deletes every object of the shards of `namespace` that `plan` gives no queue: those
/// numbered beyond the shard count, and any that rendezvous hashing left empty (its old
/// configuration would still dispatch queues that moved away).
async fn delete_unplanned_shards(
    ctx: &Context,
    namespace: &str,
    plan: &BTreeMap<u32, Vec<String>>,
) -> Result<(), Error> {
    let surplus: Vec<String> = ctx
        .deployments
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace))
        .filter_map(|d| d.labels().get(SHARD_LABEL)?.parse::<u32>().ok())
        .filter(|shard| plan.get(shard).is_none_or(Vec::is_empty))
        .map(shard_name)
        .collect();
    for name in surplus {
        tracing::info!(%namespace, shard = %name, "removing a shard the plan no longer has");
        // The Deployment goes last: it is the cached marker of a shard, so a reconcile that
        // raced this one and re-applied some of the shard finds it and deletes again.
        delete(
            Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), namespace),
            &name,
        )
        .await?;
        delete(
            Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace),
            &name,
        )
        .await?;
        delete(
            Api::<RoleBinding>::namespaced(ctx.client.clone(), namespace),
            &name,
        )
        .await?;
        delete(
            Api::<Role>::namespaced(ctx.client.clone(), namespace),
            &name,
        )
        .await?;
        delete(
            Api::<ServiceAccount>::namespaced(ctx.client.clone(), namespace),
            &name,
        )
        .await?;
        delete(
            Api::<Deployment>::namespaced(ctx.client.clone(), namespace),
            &name,
        )
        .await?;
    }
    Ok(())
}

/// Deletes an object; one that is already gone is fine.
async fn delete<K>(api: Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(%error, reason, "could not publish an Event");
    }
}

/// Reconciles one printer: probes it, writes its status, warns a human when needed.
#[tracing::instrument(skip_all, fields(namespace = printer.namespace(), name = %printer.name_any()))]
pub async fn reconcile_printer(printer: Arc<Printer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("Printer");
    let outcome = probe(&printer.spec, ctx.settings.probe_timeout).await;
    let status = printer_status(&printer, &outcome, &now());
    if let Some((reason, note)) = outcome.warning() {
        publish(&ctx, &*printer, EventType::Warning, reason, note).await;
    }
    apply_status(&ctx.client, &*printer, printer.status.as_ref(), status).await?;
    Ok(Action::requeue(ctx.settings.probe_interval))
}

/// Reconciles one policy: validity and the number of queues using it.
#[tracing::instrument(skip_all, fields(namespace = policy.namespace(), name = %policy.name_any()))]
pub async fn reconcile_policy(
    policy: Arc<AccountingPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("AccountingPolicy");
    let namespace = policy.namespace().ok_or(Error::NoNamespace)?;
    let name = policy.name_any();
    let using = ctx
        .queues
        .state()
        .iter()
        .filter(|q| q.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|q| q.spec.accounting_policy.as_deref() == Some(name.as_str()))
        .count();
    let status = policy_status(&policy, using, &now());
    apply_status(&ctx.client, &*policy, policy.status.as_ref(), status).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let kind = K::kind(&());
    ctx.metrics.failure(&kind, error.metric_label());
    let delay = ctx.failed(object_key(&*object));
    tracing::warn!(%error, kind = %kind, name = %object.name_any(), ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Wraps a reconcile so a success clears the object's backoff.
async fn tracked<K, F>(
    object: Arc<K>,
    ctx: Arc<Context>,
    reconcile: impl FnOnce(Arc<K>, Arc<Context>) -> F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: Future<Output = Result<Action, Error>>,
{
    let key = object_key(&*object);
    let result = reconcile(object, ctx.clone()).await;
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    result
}

type SeenVersion = (String, Option<i64>);

/// Tells, for the objects of one watch, a spec change from a status-only one.
///
/// A watch event with a new resourceVersion and the generation seen before changed only
/// status or metadata. Anything else counts as a spec change: a first sight, a new
/// generation, or the same resourceVersion again (a deletion or a relist, which a mapper
/// cannot tell apart).
#[derive(Default)]
pub struct SpecChanges {
    /// (namespace, name) -> (resourceVersion, generation) last seen.
    seen: Mutex<HashMap<(String, String), SeenVersion>>,
}

impl SpecChanges {
    pub fn changed(&self, meta: &kube::api::ObjectMeta) -> bool {
        let key = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let version = meta.resource_version.clone().unwrap_or_default();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(&key) {
            // Deleted (or relisted): forget it, so deleted objects do not accumulate.
            Some((rv, _)) if *rv == version => {
                seen.remove(&key);
                true
            }
            Some((_, generation)) if *generation == meta.generation => {
                seen.insert(key, (version, meta.generation));
                false
            }
            _ => {
                seen.insert(key, (version, meta.generation));
                true
            }
        }
    }
}

/// Queues of `namespace` in the store that satisfy `wanted`, as controller triggers.
fn queues_where(
    store: &Store<PrintQueue>,
    namespace: Option<String>,
    wanted: impl Fn(&PrintQueue) -> bool,
) -> Vec<ObjectRef<PrintQueue>> {
    store
        .state()
        .iter()
        .filter(|q| q.namespace() == namespace && wanted(q))
        .map(|q| ObjectRef::from_obj(&**q))
        .collect()
}

/// The queues whose reconcile applies the shard `object` belongs to; every queue of its
/// namespace when the plan gives that shard none (any of them removes it).
fn queues_of_shard_object<K: Resource>(
    store: &Store<PrintQueue>,
    object: &K,
    settings: &ShardSettings,
    applied: &AppliedShards,
) -> Vec<ObjectRef<PrintQueue>> {
    let Some(shard) = object
        .labels()
        .get(SHARD_LABEL)
        .and_then(|s| s.parse::<u32>().ok())
    else {
        return Vec::new();
    };
    let namespace = object.namespace();
    applied.forget(&(namespace.clone().unwrap_or_default(), shard));
    let count = shard_count(
        queues_where(store, namespace.clone(), |_| true).len(),
        settings,
    );
    let served = queues_where(store, namespace.clone(), |q| {
        shard_of(&q.name_any(), count) == shard
    });
    if served.is_empty() {
        queues_where(store, namespace, |_| true)
    } else {
        served
    }
}

/// Where the controllers look: all namespaces, or one.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Queue (and policy) reconciles running at once.
const QUEUE_RECONCILES: u16 = 16;
/// Printer probes running at once.
const PRINTER_PROBES: u16 = 64;

/// Runs the three controllers until `shutdown` completes.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = namespace.as_deref();
    let watch = watcher::Config::default().any_semantic();
    let shard_objects = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={FIELD_MANAGER},app.kubernetes.io/name=printfleet-spooler"
    ));

    // Bounded concurrency bounds memory (each queue reconcile holds its namespace's
    // inventory); the short debounce folds a burst of triggers for one queue into one
    // reconcile.
    let queue_controller = Controller::new(api::<PrintQueue>(&client, ns), watch.clone())
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(QUEUE_RECONCILES)
                .debounce(Duration::from_millis(100)),
        );
    let queue_store = queue_controller.store();
    // Probes wait on the network: more of them at once.
    let printer_controller = Controller::new(api::<Printer>(&client, ns), watch.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(PRINTER_PROBES));
    let policy_controller = Controller::new(api::<AccountingPolicy>(&client, ns), watch.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(QUEUE_RECONCILES));
    let (deployments, deployment_writer) = kube::runtime::reflector::store();
    let deployment_reflector = kube::runtime::reflector(
        deployment_writer,
        watcher(api::<Deployment>(&client, ns), shard_objects.clone()),
    );

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let applied = Arc::new(AppliedShards::default());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(settings.instance.clone()),
            },
        ),
        client: client.clone(),
        settings,
        metrics,
        printers: printer_controller.store(),
        queues: queue_store.clone(),
        policies: policy_controller.store(),
        deployments,
        applied: applied.clone(),
        failures: Mutex::default(),
    });

    let (s1, s2, s3, s4, s5, s6) = (
        queue_store.clone(),
        queue_store.clone(),
        queue_store.clone(),
        queue_store.clone(),
        ctx.settings.shards,
        queue_store.clone(),
    );
    let queues = queue_controller
        // A queue's spec changes its siblings' shards (configs, shard count, Service); its
        // status does not (every status write would otherwise re-reconcile the namespace).
        .watches(api::<PrintQueue>(&client, ns), watch.clone(), {
            let specs = SpecChanges::default();
            move |queue| {
                if !specs.changed(queue.meta()) {
                    return Vec::new();
                }
                queues_where(&s1, queue.namespace(), |_| true)
            }
        })
        .watches(api::<Printer>(&client, ns), watch.clone(), {
            let specs = SpecChanges::default();
            move |printer| {
                if !specs.changed(printer.meta()) {
                    return Vec::new();
                }
                let name = printer.name_any();
                queues_where(&s2, printer.namespace(), |q| {
                    q.spec.printers.contains(&name)
                })
            }
        })
        .watches(api::<AccountingPolicy>(&client, ns), watch.clone(), {
            let specs = SpecChanges::default();
            move |policy| {
                if !specs.changed(policy.meta()) {
                    return Vec::new();
                }
                let name = policy.name_any();
                queues_where(&s3, policy.namespace(), |q| {
                    q.spec.accounting_policy.as_deref() == Some(name.as_str())
                })
            }
        })
        // A Deployment's availability is its queues' readiness.
        .watches(api::<Deployment>(&client, ns), shard_objects.clone(), {
            let applied = applied.clone();
            move |deployment| queues_of_shard_object(&s4, &deployment, &s5, &applied)
        })
        // A shard's ConfigMap changed by hand (or by another tool) is put back at once.
        .watches(
            api::<ConfigMap>(&client, ns),
            shard_objects,
            move |config_map| queues_of_shard_object(&s6, &config_map, &s5, &applied),
        )
        .graceful_shutdown_on(stopped(shutdown_rx.clone()))
        .run(
            |q, c| tracked(q, c, reconcile_queue),
            error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move { log_result(result) });

    let printers = printer_controller
        .graceful_shutdown_on(stopped(shutdown_rx.clone()))
        .run(
            |p, c| tracked(p, c, reconcile_printer),
            error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move { log_result(result) });

    let policies = policy_controller
        .watches(api::<PrintQueue>(&client, ns), watch, move |queue| {
            let namespace = queue.namespace();
            // The policy it names now; a policy it stopped naming is corrected by the resync.
            queue
                .spec
                .accounting_policy
                .iter()
                .map(|policy| {
                    ObjectRef::new(policy).within(namespace.as_deref().unwrap_or_default())
                })
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(stopped(shutdown_rx))
        .run(
            |p, c| tracked(p, c, reconcile_policy),
            error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move { log_result(result) });

    let deployments = deployment_reflector.for_each(|_| async {});
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    tokio::select! {
        _ = futures_util::future::join3(queues, printers, policies) => {}
        _ = deployments => {}
    }
}

fn log_result<K: Resource, E: std::fmt::Display>(result: Result<(ObjectRef<K>, Action), E>) {
    match result {
        Ok((object, _)) => tracing::debug!(%object, "reconciled"),
        Err(error) => tracing::debug!(%error, "reconcile error"),
    }
}

/// Whether the API server serves `monitoring.coreos.com` (the Prometheus Operator).
pub async fn has_service_monitors(client: &Client) -> Result<bool, kube::Error> {
    let groups = client.list_api_groups().await?;
    Ok(groups
        .groups
        .iter()
        .any(|g| g.name == "monitoring.coreos.com"))
}

/// The verbs the operator uses on each resource (group, resource, verbs): the Helm chart's
/// ClusterRole must grant exactly these (a test compares them).
pub const RBAC: &[(&str, &str, &[&str])] = &[
    ("printfleet.io", "printers", &["get", "list", "watch"]),
    ("printfleet.io", "printqueues", &["get", "list", "watch"]),
    (
        "printfleet.io",
        "accountingpolicies",
        &["get", "list", "watch"],
    ),
    ("printfleet.io", "printers/status", &["get", "patch"]),
    ("printfleet.io", "printqueues/status", &["get", "patch"]),
    (
        "printfleet.io",
        "accountingpolicies/status",
        &["get", "patch"],
    ),
    (
        "apps",
        "deployments",
        &["get", "list", "watch", "patch", "delete"],
    ),
    (
        "",
        "configmaps",
        &["get", "list", "watch", "patch", "delete"],
    ),
    ("", "services", &["get", "patch"]),
    ("", "serviceaccounts", &["get", "patch", "delete"]),
    (
        "policy",
        "poddisruptionbudgets",
        &["get", "patch", "delete"],
    ),
    (
        "rbac.authorization.k8s.io",
        "roles",
        &["get", "patch", "delete"],
    ),
    (
        "rbac.authorization.k8s.io",
        "rolebindings",
        &["get", "patch", "delete"],
    ),
    (
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update", "patch"],
    ),
    ("events.k8s.io", "events", &["create", "patch"]),
    (
        "monitoring.coreos.com",
        "servicemonitors",
        &["get", "patch"],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_during_an_apply_leaves_the_shard_to_be_applied_again() {
        let shard = ("office".to_string(), 0);
        let applied = AppliedShards::default();
        assert!(!applied.unchanged(&shard, 7));

        let ticket = applied.ticket(&shard);
        applied.record(shard.clone(), 7, ticket);
        assert!(applied.unchanged(&shard, 7));
        assert!(
            !applied.unchanged(&shard, 8),
            "another fingerprint is applied"
        );

        // A hand edit lands after this reconcile applied and before it recorded.
        applied.forget(&shard);
        let ticket = applied.ticket(&shard);
        applied.forget(&shard);
        applied.record(shard.clone(), 7, ticket);
        assert!(!applied.unchanged(&shard, 7), "the edit must be put back");

        let ticket = applied.ticket(&shard);
        applied.record(shard.clone(), 7, ticket);
        assert!(applied.unchanged(&shard, 7));
    }

    #[test]
    fn spec_changes_ignore_status_only_updates_and_pass_deletions() {
        let meta = |rv: &str, generation: i64| kube::api::ObjectMeta {
            namespace: Some("office".into()),
            name: Some("lobby".into()),
            resource_version: Some(rv.into()),
            generation: Some(generation),
            ..Default::default()
        };
        let specs = SpecChanges::default();
        assert!(specs.changed(&meta("1", 1)), "first sight");
        assert!(
            !specs.changed(&meta("2", 1)),
            "status write: same generation"
        );
        assert!(specs.changed(&meta("3", 2)), "spec change: new generation");
        assert!(specs.changed(&meta("3", 2)), "same version again: deleted");
        assert!(specs.changed(&meta("4", 2)), "forgotten after the deletion");
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), Duration::from_secs(300));
        assert_eq!(backoff(200), Duration::from_secs(300));
    }
}
