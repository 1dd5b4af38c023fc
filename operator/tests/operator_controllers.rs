//! The controllers running for real (watches, reconciles, server-side apply, status)
//! against the Kubernetes API double in `support/`.

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use printfleet_crds::{
    AccountingPolicy, AccountingPolicySpec, PrintQueue, PrintQueueSpec, Printer, PrinterSpec,
};
use printfleet_operator::controller::{self, Settings};
use printfleet_operator::desired::{CONFIG_HASH_ANNOTATION, SharedStore, SpoolerSettings};
use printfleet_operator::metrics::Metrics;
use printfleet_operator::shard::ShardSettings;
use serde_json::Value;
use support::apiserver::ApiServer;
use support::file_printer;
use tokio::sync::oneshot;

const NS: &str = "office";
const CONFIG_MAPS: &str = "/v1/configmaps";
const DEPLOYMENTS: &str = "apps/v1/deployments";
const QUEUES: &str = "printfleet.io/v1alpha1/printqueues";

/// The operator's controllers on a double; both stop when dropped.
struct Running {
    api: ApiServer,
    metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn start(shards: ShardSettings, groups: &[&str]) -> Running {
    start_with(shards, groups, None).await
}

/// `start`, with the operator reading queue depths from the spooler at `spooler_address`.
async fn start_with(
    shards: ShardSettings,
    groups: &[&str],
    spooler_address: Option<String>,
) -> Running {
    let api = ApiServer::start(groups).await;
    let client = api.client();
    let service_monitors = controller::has_service_monitors(&client)
        .await
        .expect("discovery");
    let settings = Settings {
        shards,
        probe_interval: Duration::from_secs(1),
        probe_timeout: Duration::from_secs(2),
        service_monitors,
        spooler: SpoolerSettings {
            shared_store: Some(SharedStore {
                dsn_secret: "spooler-store".into(),
                documents_url: "s3://print-documents".into(),
                s3_endpoint: None,
                s3_region: None,
                s3_credentials_secret: None,
            }),
            ..SpoolerSettings::default()
        },
        spooler_address,
        ..Settings::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let metrics = Metrics::new().expect("metrics");
    let task = tokio::spawn(controller::run(
        client,
        settings,
        metrics.clone(),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    Running {
        api,
        metrics,
        stop: Some(stop),
        task,
    }
}

/// Polls `check` until it gives a value, failing the test after 20 s.
async fn eventually<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    printfleet_e2e::process::eventually(what, Duration::from_secs(20), check).await
}

fn queue(name: &str, printers: &[&str], policy: Option<&str>) -> PrintQueue {
    PrintQueue::new(
        name,
        PrintQueueSpec {
            printers: printers.iter().map(|p| (*p).to_owned()).collect(),
            accounting_policy: policy.map(Into::into),
            ..PrintQueueSpec::default()
        },
    )
}

async fn create<K>(client: &kube::Client, object: K)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), NS);
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
}

fn config_of(api: &ApiServer, shard: u32) -> Option<String> {
    api.get(CONFIG_MAPS, NS, &format!("printfleet-shard-{shard}"))
        .and_then(|cm| cm["data"]["printfleet.yaml"].as_str().map(str::to_owned))
}

fn queue_ready(api: &ApiServer, name: &str) -> Option<(String, String)> {
    let queue = api.get(QUEUES, NS, name)?;
    let ready = queue["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    Some((
        ready["status"].as_str()?.to_owned(),
        ready["reason"].as_str()?.to_owned(),
    ))
}

/// The queues of a configuration with the shard each is annotated with.
fn queue_shards_in(config: &str) -> Vec<(String, String)> {
    config
        .split("---\n")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|doc| doc["kind"] == "PrintQueue")
        .filter_map(|doc| {
            Some((
                doc["metadata"]["name"].as_str()?.to_owned(),
                doc["metadata"]["annotations"]["printfleet.io/shard"]
                    .as_str()?
                    .to_owned(),
            ))
        })
        .collect()
}

fn queue_names_in(config: &str) -> Vec<String> {
    queue_shards_in(config)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

#[tokio::test]
async fn creating_objects_yields_a_shard_a_service_and_honest_statuses() {
    let running = start(ShardSettings::default(), &["monitoring.coreos.com"]).await;
    let api = &running.api;
    let client = api.client();
    create(&client, file_printer("hall")).await;
    create(
        &client,
        AccountingPolicy::new(
            "eur",
            AccountingPolicySpec {
                currency: "EUR".into(),
                ..Default::default()
            },
        ),
    )
    .await;
    create(&client, queue("lobby", &["hall"], Some("eur"))).await;

    let config = eventually("the shard's config", || {
        config_of(api, 0).filter(|c| c.contains("lobby"))
    })
    .await;
    assert_eq!(queue_names_in(&config), vec!["lobby"]);
    assert!(config.contains("kind: Printer") && config.contains("kind: AccountingPolicy"));
    // The ConfigMap is applied just before the Deployment.
    let deployment = eventually("deployment applied", || {
        api.get(DEPLOYMENTS, NS, "printfleet-shard-0")
    })
    .await;
    assert_eq!(deployment["spec"]["replicas"], 2);
    let owner = &deployment["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "PrintQueue");
    assert_eq!(owner["name"], "lobby");
    for (collection, name) in [
        ("policy/v1/poddisruptionbudgets", "printfleet-shard-0"),
        ("/v1/serviceaccounts", "printfleet-shard-0"),
        ("rbac.authorization.k8s.io/v1/roles", "printfleet-shard-0"),
        (
            "rbac.authorization.k8s.io/v1/rolebindings",
            "printfleet-shard-0",
        ),
        ("/v1/services", "printfleet"),
        ("monitoring.coreos.com/v1/servicemonitors", "printfleet"),
    ] {
        eventually(&format!("{collection} {name} applied"), || {
            api.get(collection, NS, name)
        })
        .await;
    }

    // No spooler pod is available yet: the queue says so (once the printer and policy have
    // reached the caches: objects applied together arrive in any order).
    let ready = eventually("queue status", || {
        queue_ready(api, "lobby")
            .filter(|r| r.1 != "PrinterNotFound" && r.1 != "AccountingPolicyNotFound")
    })
    .await;
    assert_eq!(ready, ("False".into(), "ShardUnavailable".into()));
    let status = api.get(QUEUES, NS, "lobby").expect("queue")["status"].clone();
    assert_eq!(status["shard"], "printfleet-shard-0");
    assert_eq!(
        status["endpoint"],
        "ipp://printfleet.office.svc:631/ipp/print/lobby"
    );
    assert_eq!(status["observedGeneration"], 1);

    // The Deployment becomes available: the watch on it makes the queue Ready.
    api.make_deployments_available(NS);
    eventually("queue Ready", || {
        queue_ready(api, "lobby").filter(|r| r.0 == "True")
    })
    .await;

    let printer = eventually("printer status", || {
        api.get("printfleet.io/v1alpha1/printers", NS, "hall")
            .filter(|p| !p["status"].is_null())
    })
    .await;
    let reachable = printer["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Reachable")
        .cloned();
    assert_eq!(
        reachable.map(|c| c["reason"].clone()),
        Some(Value::from("LocalDirectory"))
    );
    let policy = eventually("policy status", || {
        api.get("printfleet.io/v1alpha1/accountingpolicies", NS, "eur")
            .filter(|p| p["status"]["queues"] == 1)
    })
    .await;
    assert_eq!(policy["status"]["conditions"][0]["status"], "True");
}

#[tokio::test]
async fn a_missing_printer_is_reported_and_resolved_when_it_appears() {
    let running = start(ShardSettings::default(), &[]).await;
    let api = &running.api;
    let client = api.client();
    create(&client, file_printer("hall")).await;
    create(&client, queue("early", &["hall"], None)).await;
    create(&client, queue("waiting", &["late"], None)).await;

    let ready = eventually("PrinterNotFound", || {
        queue_ready(api, "waiting").filter(|r| r.1 == "PrinterNotFound")
    })
    .await;
    assert_eq!(ready.0, "False");
    // The spooler refuses dangling references, so the queue stays out of the config.
    let config = eventually("config with the resolvable queue", || {
        config_of(api, 0).filter(|c| c.contains("early"))
    })
    .await;
    assert_eq!(queue_names_in(&config), vec!["early"]);
    let warned = eventually("a Warning Event", || {
        // Objects applied together reach the caches in any order, so "early" may be warned
        // about too until its printer's watch event arrives; "waiting" must be.
        api.list("events.k8s.io/v1/events", NS)
            .into_iter()
            .find(|e| e["reason"] == "PrinterNotFound" && e["regarding"]["name"] == "waiting")
    })
    .await;
    assert_eq!(warned["type"], "Warning");
    assert!(
        warned["note"].as_str().is_some_and(|n| n.contains("late")),
        "{warned}"
    );

    // No ServiceMonitor without the monitoring API.
    assert!(
        api.get("monitoring.coreos.com/v1/servicemonitors", NS, "printfleet")
            .is_none()
    );

    create(&client, file_printer("late")).await;
    eventually("queue re-reconciled once its printer exists", || {
        queue_ready(api, "waiting").filter(|r| r.1 == "ShardUnavailable")
    })
    .await;
    let config = eventually("config with both queues", || {
        config_of(api, 0).filter(|c| c.contains("waiting"))
    })
    .await;
    assert_eq!(queue_names_in(&config), vec!["early", "waiting"]);
}

#[tokio::test]
async fn updating_a_queue_rolls_its_config_and_deleting_queues_cleans_up() {
    let running = start(ShardSettings::default(), &[]).await;
    let api = &running.api;
    let client = api.client();
    create(&client, file_printer("hall")).await;
    create(&client, queue("a", &["hall"], None)).await;
    create(&client, queue("b", &["hall"], None)).await;
    eventually("both queues configured", || {
        config_of(api, 0).filter(|c| queue_names_in(c).len() == 2)
    })
    .await;
    let hash = |api: &ApiServer| {
        api.get(DEPLOYMENTS, NS, "printfleet-shard-0")
            .and_then(|d| {
                d["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
                    .as_str()
                    .map(str::to_owned)
            })
    };
    let before = eventually("config hash", || hash(api)).await;

    let queues: Api<PrintQueue> = Api::namespaced(client.clone(), NS);
    // As `kubectl patch` does: a replace could meet the operator's status write (409).
    let change = serde_json::json!({"spec": {"description": "second floor"}});
    queues
        .patch("b", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("update b");
    eventually("the new spec in the config", || {
        config_of(api, 0).filter(|c| c.contains("second floor"))
    })
    .await;
    let after = eventually("a new hash", || hash(api).filter(|h| *h != before)).await;
    assert_ne!(before, after);
    eventually("observedGeneration 2", || {
        api.get(QUEUES, NS, "b")
            .filter(|q| q["status"]["observedGeneration"] == 2)
    })
    .await;

    queues
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    eventually("a gone from the config", || {
        config_of(api, 0).filter(|c| queue_names_in(c) == ["b"])
    })
    .await;
    queues
        .delete("b", &DeleteParams::default())
        .await
        .expect("delete b");
    // With its last owner gone, the shard is garbage collected.
    eventually("shard collected", || {
        api.get(DEPLOYMENTS, NS, "printfleet-shard-0")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(api.get(CONFIG_MAPS, NS, "printfleet-shard-0").is_none());
    assert!(api.get("/v1/services", NS, "printfleet").is_none());
}

#[tokio::test]
async fn shard_count_follows_the_number_of_queues() {
    let shards = ShardSettings {
        queues_per_shard: 2,
        min_shards: 1,
        max_shards: 4,
        replicas_per_shard: 2,
    };
    let running = start(shards, &[]).await;
    let api = &running.api;
    let client = api.client();
    create(&client, file_printer("hall")).await;
    let names = ["q0", "q1", "q2", "q3", "q4"];
    for name in names {
        create(&client, queue(name, &["hall"], None)).await;
    }
    // Five queues, two per shard: three shards. Every shard holds the same configuration
    // (its pods accept jobs for any queue behind the one Service), and each queue is
    // annotated with the one shard that dispatches it.
    let configs = |api: &ApiServer, shards: u32| -> Option<Vec<String>> {
        let configs: Vec<String> = (0..shards)
            .map(|s| config_of(api, s))
            .collect::<Option<Vec<_>>>()?;
        let first = configs.first()?;
        configs.iter().all(|c| c == first).then_some(configs)
    };
    let sorted_names = |config: &str| -> Vec<String> {
        let mut names = queue_names_in(config);
        names.sort();
        names
    };
    let config = eventually("three equal shard configs with all five queues", || {
        configs(api, 3)
            .filter(|c| sorted_names(&c[0]) == names)
            .filter(|_| config_of(api, 3).is_none())
    })
    .await;
    let placement = queue_shards_in(&config[0]);
    let shard_of_status = |api: &ApiServer, name: &str| {
        api.get(QUEUES, NS, name)
            .and_then(|q| q["status"]["shard"].as_str().map(str::to_owned))
    };
    for (name, shard) in &placement {
        eventually("status and config agree on the shard", || {
            shard_of_status(api, name).filter(|s| s == shard)
        })
        .await;
        let deployment = api.get(DEPLOYMENTS, NS, shard).expect("shard deployment");
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone();
        let args: Vec<&str> = args
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.windows(2).any(|w| w == ["--shard", shard.as_str()]),
            "{args:?}"
        );
    }

    // Down to two queues: one shard, the others removed, and the deleted queues gone from
    // the configuration (the spooler then refuses submissions to them).
    let queues: Api<PrintQueue> = Api::namespaced(client.clone(), NS);
    for name in ["q2", "q3", "q4"] {
        queues
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    eventually("one shard left", || {
        (api.get(DEPLOYMENTS, NS, "printfleet-shard-1").is_none()
            && api.get(DEPLOYMENTS, NS, "printfleet-shard-2").is_none()
            && config_of(api, 1).is_none()
            && config_of(api, 2).is_none()
            && config_of(api, 0).is_some_and(|c| {
                queue_shards_in(&c)
                    == [
                        ("q0".to_owned(), "printfleet-shard-0".to_owned()),
                        ("q1".to_owned(), "printfleet-shard-0".to_owned()),
                    ]
            }))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_printer_gets_conditions_and_an_event() {
    let running = start(ShardSettings::default(), &[]).await;
    let api = &running.api;
    let client = api.client();
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    create(
        &client,
        Printer::new(
            "gone",
            PrinterSpec {
                uri: format!("socket://127.0.0.1:{port}"),
                ..PrinterSpec::default()
            },
        ),
    )
    .await;
    let printer = eventually("printer status", || {
        api.get("printfleet.io/v1alpha1/printers", NS, "gone")
            .filter(|p| !p["status"].is_null())
    })
    .await;
    let conditions = printer["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let reachable = conditions
        .iter()
        .find(|c| c["type"] == "Reachable")
        .expect("Reachable");
    assert_eq!(
        (reachable["status"].as_str(), reachable["reason"].as_str()),
        (Some("False"), Some("PrinterUnreachable"))
    );
    assert_eq!(printer["status"]["observedGeneration"], 1);
    eventually("PrinterUnreachable Event", || {
        api.list("events.k8s.io/v1/events", NS)
            .into_iter()
            .find(|e| e["reason"] == "PrinterUnreachable")
    })
    .await;
}

#[tokio::test]
async fn the_double_refuses_stale_writes() {
    let api = ApiServer::start(&[]).await;
    let client = api.client();
    create(&client, file_printer("hall")).await;
    let printers: Api<Printer> = Api::namespaced(client, NS);
    let first = printers.get("hall").await.expect("get");
    let mut winner = first.clone();
    winner.spec.description = Some("first writer".into());
    printers
        .replace("hall", &PostParams::default(), &winner)
        .await
        .expect("first write wins");
    let mut loser = first;
    loser.spec.description = Some("second writer".into());
    match printers
        .replace("hall", &PostParams::default(), &loser)
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409),
        other => panic!("a stale write must be refused, got {other:?}"),
    }
    let stored = printers.get("hall").await.expect("get");
    assert_eq!(stored.spec.description.as_deref(), Some("first writer"));
    assert_eq!(stored.metadata.generation, Some(2));
}

/// Server-side apply in the double behaves as the API server's: an apply that would change
/// a field another manager owns is refused unless forced, and a manager's apply removes
/// the fields it applied before and no longer applies.
#[tokio::test]
async fn the_double_tracks_field_owners_of_applies() {
    let api = ApiServer::start(&[]).await;
    let client = api.client();
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, NS);
    let apply = |data: Value| {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "shared"}, "data": data})
    };
    config_maps
        .patch(
            "shared",
            &PatchParams::apply("first"),
            &Patch::Apply(apply(serde_json::json!({"a": "1", "b": "1"}))),
        )
        .await
        .expect("first apply creates");
    // Same value: shared ownership, no conflict.
    config_maps
        .patch(
            "shared",
            &PatchParams::apply("second"),
            &Patch::Apply(apply(serde_json::json!({"a": "1"}))),
        )
        .await
        .expect("agreeing apply");
    match config_maps
        .patch(
            "shared",
            &PatchParams::apply("second"),
            &Patch::Apply(apply(serde_json::json!({"b": "2"}))),
        )
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
            assert!(
                status.message.contains("first: /data/b"),
                "{}",
                status.message
            );
        }
        other => panic!("a conflicting apply must be refused, got {other:?}"),
    }
    let forced = config_maps
        .patch(
            "shared",
            &PatchParams::apply("second").force(),
            &Patch::Apply(apply(serde_json::json!({"b": "2"}))),
        )
        .await
        .expect("a forced apply wins");
    let data = forced.data.unwrap_or_default();
    // "a" is still owned by "first", so "second" dropping it does not remove it.
    assert_eq!(data.get("a").map(String::as_str), Some("1"));
    assert_eq!(data.get("b").map(String::as_str), Some("2"));
    let after = config_maps
        .patch(
            "shared",
            &PatchParams::apply("first"),
            &Patch::Apply(apply(serde_json::json!({"c": "3"}))),
        )
        .await
        .expect("first applies something else");
    let data = after.data.unwrap_or_default();
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["b", "c"],
        "first no longer applies a, which nobody else owns: removed"
    );
}

/// Another writer races the operator on its own objects: a hand edit of a shard's
/// ConfigMap is put back at once, a non-forced apply by another tool is refused, a stale
/// update is refused, and the operator's reconciles never fail over it.
#[tokio::test]
async fn conflicting_writes_converge_to_the_operators_intent() {
    let running = start(ShardSettings::default(), &[]).await;
    let api = &running.api;
    let client = api.client();
    create(&client, file_printer("hall")).await;
    create(&client, queue("lobby", &["hall"], None)).await;
    let intended = eventually("the shard's config", || {
        config_of(api, 0).filter(|c| c.contains("lobby"))
    })
    .await;
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), NS);

    // kubectl edit: an update by another field manager takes the field; the operator's
    // forced apply (on the ConfigMap's watch event) takes it back.
    let tamper = serde_json::json!({"data": {"printfleet.yaml": "tampered"}});
    for _ in 0..5 {
        config_maps
            .patch(
                "printfleet-shard-0",
                &PatchParams {
                    field_manager: Some("kubectl-edit".into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&tamper),
            )
            .await
            .expect("the hand edit is accepted");
        eventually("the operator restores the config", || {
            config_of(api, 0).filter(|c| *c == intended)
        })
        .await;
    }

    // Another tool applying without force meets the operator's ownership.
    let other = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "printfleet-shard-0"}, "data": {"printfleet.yaml": "mine"}});
    match config_maps
        .patch(
            "printfleet-shard-0",
            &PatchParams::apply("helm"),
            &Patch::Apply(&other),
        )
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409),
        other => panic!("a conflicting apply must be refused, got {other:?}"),
    }

    // A stale replace (read before the operator's last write) is refused.
    let stale = config_maps
        .get("printfleet-shard-0")
        .await
        .expect("read the ConfigMap");
    let queues: Api<PrintQueue> = Api::namespaced(client.clone(), NS);
    let change = serde_json::json!({"spec": {"description": "front desk"}});
    queues
        .patch("lobby", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("update the queue");
    eventually("the new spec in the config", || {
        config_of(api, 0).filter(|c| c.contains("front desk"))
    })
    .await;
    let mut stale_edit = stale;
    stale_edit
        .data
        .get_or_insert_default()
        .insert("printfleet.yaml".into(), "stale".into());
    match config_maps
        .replace("printfleet-shard-0", &PostParams::default(), &stale_edit)
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409),
        other => panic!("a stale replace must be refused, got {other:?}"),
    }
    assert!(config_of(api, 0).is_some_and(|c| c.contains("front desk")));

    // None of this made a reconcile fail (no error loop, no backoff).
    let metrics = running.metrics.render();
    assert!(
        !metrics.contains("printfleet_operator_reconcile_failures_total{"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_status_shows_the_depth_its_spooler_reports() {
    // A real spooler holding jobs for `lobby`: its printer never answers, so they wait.
    let closed_port = printfleet_e2e::free_port().expect("port");
    let spooler = printfleet_e2e::Spooler::start(&printfleet_e2e::spooler::config_yaml(&[
        printfleet_e2e::spooler::printer_yaml("hall", &format!("socket://127.0.0.1:{closed_port}")),
        printfleet_e2e::spooler::queue_yaml("lobby", &["hall"], ""),
    ]))
    .expect("spooler");
    let mut connection =
        printfleet_e2e::IppConnection::new(&spooler.queue_uri("lobby")).expect("client");
    for number in 0..2 {
        let response = connection
            .print_job(
                "alice",
                &format!("waiting {number}"),
                "text/plain",
                bytes::Bytes::from_static(b"hello\n"),
            )
            .await
            .expect("Print-Job");
        assert!(response.is_success(), "status {:#06x}", response.raw_status);
    }

    let running = start_with(
        ShardSettings::default(),
        &[],
        Some(format!("127.0.0.1:{}", spooler.port())),
    )
    .await;
    let api = &running.api;
    let client = api.client();
    create(&client, file_printer("hall")).await;
    create(&client, queue("lobby", &["hall"], None)).await;
    // Without an available pod there is nobody to ask.
    eventually("lobby reconciled", || queue_ready(api, "lobby")).await;
    let depth = |api: &ApiServer| {
        api.get(QUEUES, NS, "lobby")
            .map(|queue| queue["status"]["depth"].clone())
    };
    assert_eq!(depth(api), Some(Value::Null));

    // As the Deployment controller reports a ready pod.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), NS);
    deployments
        .patch_status(
            "printfleet-shard-0",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"availableReplicas": 1}})),
        )
        .await
        .expect("deployment status");
    eventually("lobby's depth", || {
        depth(api).filter(|depth| depth.as_i64() == Some(2))
    })
    .await;
}
