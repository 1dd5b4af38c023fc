use printfleet_crds::{AccountingPolicySpec, PrintQueueSpec, PrinterSpec};

use super::*;

/// Spooler pods on PostgreSQL + S3, with S3 credentials from a Secret.
fn shared_spooler() -> SpoolerSettings {
    SpoolerSettings {
        shared_store: Some(SharedStore {
            dsn_secret: "spooler-store".into(),
            documents_url: "s3://print-documents/office".into(),
            s3_endpoint: Some("http://minio.storage:9000".into()),
            s3_region: None,
            s3_credentials_secret: Some("spooler-s3".into()),
        }),
        ..SpoolerSettings::default()
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("office".into()),
        uid: Some(format!("uid-{name}")),
        generation: Some(1),
        ..ObjectMeta::default()
    }
}

fn printer(name: &str, spec: PrinterSpec) -> Printer {
    Printer {
        metadata: meta(name),
        spec,
        status: None,
    }
}

fn ipp_printer(name: &str) -> Printer {
    printer(
        name,
        PrinterSpec {
            uri: format!("ipp://{name}.example:631/ipp/print"),
            ..PrinterSpec::default()
        },
    )
}

fn queue(name: &str, printers: &[&str], policy: Option<&str>) -> PrintQueue {
    PrintQueue {
        metadata: meta(name),
        spec: PrintQueueSpec {
            printers: printers.iter().map(|p| (*p).to_owned()).collect(),
            accounting_policy: policy.map(Into::into),
            ..PrintQueueSpec::default()
        },
        status: None,
    }
}

fn policy(name: &str, currency: &str) -> AccountingPolicy {
    AccountingPolicy {
        metadata: meta(name),
        spec: AccountingPolicySpec {
            currency: currency.into(),
            ..AccountingPolicySpec::default()
        },
        status: None,
    }
}

fn inventory(
    printers: Vec<Printer>,
    queues: Vec<PrintQueue>,
    policies: Vec<AccountingPolicy>,
) -> Inventory {
    let by_name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
    Inventory {
        printers: printers
            .into_iter()
            .map(|p| (by_name(&p.metadata), p))
            .collect(),
        queues: queues
            .into_iter()
            .map(|q| (by_name(&q.metadata), q))
            .collect(),
        policies: policies
            .into_iter()
            .map(|p| (by_name(&p.metadata), p))
            .collect(),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| (*n).to_owned()).collect()
}

/// A plan (shard -> queues) written out by hand.
fn plan_of(shards: &[(u32, &[&str])]) -> BTreeMap<u32, Vec<String>> {
    shards
        .iter()
        .map(|(shard, queues)| (*shard, names(queues)))
        .collect()
}

/// Each document of a rendered configuration, parsed.
fn documents_of(config: &str) -> Vec<serde_yaml::Value> {
    config
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).expect("each document parses"))
        .collect()
}

#[test]
fn resolve_names_what_is_missing_or_invalid() {
    let mut bad_printer = ipp_printer("bad");
    bad_printer.spec.uri = "http://nope".into();
    let inv = inventory(
        vec![ipp_printer("p1"), bad_printer],
        vec![],
        vec![policy("eur", "EUR"), policy("broken", "euro")],
    );
    assert_eq!(inv.resolve(&queue("a", &["p1"], Some("eur"))), Ok(()));
    assert_eq!(
        inv.resolve(&queue("a", &["p1", "p2", "p3"], None)),
        Err(Unresolved::PrinterNotFound(names(&["p2", "p3"])))
    );
    assert_eq!(
        inv.resolve(&queue("a", &["bad"], None)),
        Err(Unresolved::PrinterInvalid(names(&["bad"])))
    );
    assert_eq!(
        inv.resolve(&queue("a", &["p1"], Some("usd"))),
        Err(Unresolved::PolicyNotFound("usd".into()))
    );
    assert_eq!(
        inv.resolve(&queue("a", &["p1"], Some("broken"))),
        Err(Unresolved::PolicyInvalid("broken".into()))
    );
    assert!(matches!(
        inv.resolve(&queue("a", &[], None)),
        Err(Unresolved::Invalid(_))
    ));
}

#[test]
fn config_holds_every_servable_queue_annotated_with_its_shard() {
    let inv = inventory(
        vec![
            ipp_printer("p1"),
            ipp_printer("p2"),
            ipp_printer("p3"),
            ipp_printer("spare"),
        ],
        vec![
            queue("a", &["p1"], Some("eur")),
            queue("b", &["p1", "p2"], None),
            queue("dangling", &["p1", "gone"], None),
            queue("elsewhere", &["p3"], None),
        ],
        vec![policy("eur", "EUR"), policy("usd", "USD")],
    );
    let plan = plan_of(&[(0, &["a", "b", "dangling"]), (1, &["elsewhere"])]);
    let config = render_config(&inv, &plan).expect("renders");
    let documents = documents_of(&config);
    let heads: Vec<(String, String, Option<String>)> = documents
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                d["metadata"]["annotations"][SHARD_ANNOTATION]
                    .as_str()
                    .map(str::to_owned),
            )
        })
        .collect();
    let shard = |n: u32| Some(shard_name(n));
    // Unused printers and policies and the queue with a dangling reference stay out: the
    // spooler refuses a configuration that names something missing.
    assert_eq!(
        heads,
        vec![
            ("AccountingPolicy".into(), "eur".into(), None),
            ("Printer".into(), "p1".into(), None),
            ("Printer".into(), "p2".into(), None),
            ("Printer".into(), "p3".into(), None),
            ("PrintQueue".into(), "a".into(), shard(0)),
            ("PrintQueue".into(), "b".into(), shard(0)),
            ("PrintQueue".into(), "elsewhere".into(), shard(1)),
        ]
    );
    for document in &documents {
        assert_eq!(document["apiVersion"].as_str(), Some(API_VERSION));
    }
    assert_eq!(
        documents[1]["spec"]["uri"].as_str(),
        Some("ipp://p1.example:631/ipp/print")
    );
}

#[test]
fn every_shard_holds_the_same_config_and_dispatches_its_own_queues() {
    let inv = inventory(
        vec![ipp_printer("p1")],
        vec![queue("a", &["p1"], None), queue("b", &["p1"], None)],
        vec![],
    );
    let plan = plan_of(&[(0, &["a"]), (1, &["b"])]);
    let objects = |shard| {
        shard_objects(
            "office",
            shard,
            &plan,
            &inv,
            &ShardSettings::default(),
            &SpoolerSettings::default(),
        )
        .expect("builds")
    };
    let (zero, one) = (objects(0), objects(1));
    let config = |o: &ShardObjects| {
        o.config_map
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_KEY))
            .cloned()
            .expect("config")
    };
    assert_eq!(config(&zero), config(&one));
    assert_eq!(config(&zero), render_config(&inv, &plan).expect("renders"));
    let args = |o: &ShardObjects| {
        o.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers[0].args.clone())
            .unwrap_or_default()
    };
    assert!(
        args(&zero)
            .windows(2)
            .any(|w| w == ["--shard", "printfleet-shard-0"]),
        "{:?}",
        args(&zero)
    );
    assert!(
        args(&one)
            .windows(2)
            .any(|w| w == ["--shard", "printfleet-shard-1"])
    );
    // Each shard belongs to the queues it dispatches (garbage collection), not to all.
    let owner_names = |o: &ShardObjects| -> Vec<String> {
        o.config_map
            .metadata
            .owner_references
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect()
    };
    assert_eq!(owner_names(&zero), ["a"]);
    assert_eq!(owner_names(&one), ["b"]);
}

#[test]
fn a_queue_the_plan_does_not_place_is_left_out() {
    let inv = inventory(
        vec![ipp_printer("p1")],
        vec![queue("a", &["p1"], None), queue("new", &["p1"], None)],
        vec![],
    );
    let config = render_config(&inv, &plan_of(&[(0, &["a"])])).expect("renders");
    let queues: Vec<String> = documents_of(&config)
        .iter()
        .filter(|d| d["kind"] == "PrintQueue")
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(queues, ["a"]);
}

#[test]
fn config_hash_changes_with_config_and_only_then() {
    let mut inv = inventory(
        vec![ipp_printer("p1")],
        vec![queue("a", &["p1"], None)],
        vec![],
    );
    let objects = |inv: &Inventory| {
        shard_objects(
            "office",
            0,
            &plan_of(&[(0, &["a"])]),
            inv,
            &ShardSettings::default(),
            &shared_spooler(),
        )
        .expect("builds")
    };
    let hash_of = |objects: &ShardObjects| {
        objects
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
            .expect("hash annotation")
    };
    let first = objects(&inv);
    assert_eq!(
        hash_of(&first),
        hash_of(&objects(&inv)),
        "same input, same hash"
    );
    let config = first
        .config_map
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_KEY))
        .expect("config");
    assert_eq!(hash_of(&first), config_hash(config));
    inv.queues.get_mut("a").expect("queue a").spec.description = Some("second floor".into());
    assert_ne!(
        hash_of(&first),
        hash_of(&objects(&inv)),
        "a spec change rolls the pods"
    );
}

#[test]
fn secrets_are_mounted_and_never_rendered_into_the_config() {
    let mut secure = printer(
        "secure",
        PrinterSpec {
            uri: "ipps://secure.example/ipp/print".into(),
            credentials: Some(SecretKeyRef {
                name: "printer-login".into(),
                key: "basic".into(),
            }),
            ca_bundle: Some(SecretKeyRef {
                name: "site-ca".into(),
                key: "ca.pem".into(),
            }),
            ..PrinterSpec::default()
        },
    );
    secure.metadata.uid = Some("u".into());
    let mut locked = queue("locked", &["secure"], None);
    locked.spec.access.authentication = printfleet_crds::queue::AuthenticationMode::Basic;
    locked.spec.access.credentials = Some(SecretKeyRef {
        name: "printer-login".into(),
        key: "users".into(),
    });
    let inv = inventory(
        vec![secure, ipp_printer("plain")],
        vec![locked, queue("open", &["plain"], None)],
        vec![],
    );
    // Shard 2 dispatches only "open", yet its pods accept (and authenticate) jobs for
    // "locked" too and hold the whole configuration: they mount every Secret it names.
    let objects = shard_objects(
        "office",
        2,
        &plan_of(&[(1, &["locked"]), (2, &["open"])]),
        &inv,
        &ShardSettings::default(),
        &SpoolerSettings::default(),
    )
    .expect("builds");

    let pod = objects
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let secret_volumes: Vec<(String, Vec<String>)> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref())
        .map(|s| {
            (
                s.secret_name.clone().unwrap_or_default(),
                s.items
                    .iter()
                    .flatten()
                    .map(|i| format!("{}->{}", i.key, i.path))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        secret_volumes,
        vec![
            (
                "printer-login".into(),
                vec!["basic->basic".into(), "users->users".into()]
            ),
            ("site-ca".into(), vec!["ca.pem->ca.pem".into()]),
        ]
    );
    let mounts: Vec<(String, bool)> = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name.starts_with("secret-"))
        .map(|m| (m.mount_path.clone(), m.read_only == Some(true)))
        .collect();
    assert_eq!(
        mounts,
        vec![
            ("/etc/printfleet/secrets/printer-login".into(), true),
            ("/etc/printfleet/secrets/site-ca".into(), true),
        ]
    );
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(args.windows(2).any(|w| w == ["--secrets-dir", SECRETS_DIR]));
    // The config names the Secret, it never holds a Secret's content.
    let config = objects
        .config_map
        .data
        .and_then(|mut d| d.remove(CONFIG_KEY))
        .expect("config");
    assert!(config.contains("name: printer-login"));
    assert!(config.contains("key: basic"));
}

#[test]
fn deployment_is_redundant_probed_and_locked_down() {
    let inv = inventory(
        vec![ipp_printer("p1")],
        vec![queue("a", &["p1"], None)],
        vec![],
    );
    let shards = ShardSettings {
        replicas_per_shard: 3,
        ..ShardSettings::default()
    };
    let spooler = SpoolerSettings {
        image: "registry.example/spooler:1.2".into(),
        ..shared_spooler()
    };
    let objects = shard_objects(
        "office",
        1,
        &plan_of(&[(1, &["a"])]),
        &inv,
        &shards,
        &spooler,
    )
    .expect("builds");
    let deployment = objects.deployment;
    assert_eq!(
        deployment.metadata.name.as_deref(),
        Some("printfleet-shard-1")
    );
    assert_eq!(deployment.metadata.namespace.as_deref(), Some("office"));
    let owners = deployment
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("PrintQueue", "uid-a")
    );
    assert_eq!(owners[0].api_version, "printfleet.io/v1alpha1");

    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        spec.selector
            .match_labels
            .as_ref()
            .and_then(|l| l.get(SHARD_LABEL))
            .map(String::as_str),
        Some("1")
    );
    let rolling = spec
        .strategy
        .and_then(|s| s.rolling_update)
        .expect("rolling update");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    let pod = spec.template.spec.expect("pod");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("printfleet-shard-1")
    );
    let pod_security = pod.security_context.expect("pod security");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    let anti = pod
        .affinity
        .and_then(|a| a.pod_anti_affinity)
        .expect("anti-affinity");
    let term = &anti
        .preferred_during_scheduling_ignored_during_execution
        .expect("preferred")[0];
    assert_eq!(
        term.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    assert_eq!(
        pod.topology_spread_constraints.expect("spread")[0].topology_key,
        "topology.kubernetes.io/zone"
    );
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example/spooler:1.2")
    );
    let security = container
        .security_context
        .clone()
        .expect("container security");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    let path = |probe: &Option<Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&container.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(&container.readiness_probe).as_deref(), Some("/readyz"));
    let resources = container.resources.clone().expect("resources");
    assert_eq!(
        resources.limits.and_then(|l| l.get("memory").cloned()),
        Some(Quantity("512Mi".into()))
    );
    assert_eq!(
        container.ports.as_ref().map(|p| p[0].container_port),
        Some(SPOOLER_PORT)
    );

    let pdb = objects.pod_disruption_budget.spec.expect("pdb");
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    let rules = objects.role.rules.expect("rules");
    assert!(rules.iter().any(
        |r| r.resource_names == Some(vec!["printfleet-shard-1".into()])
            && r.verbs.contains(&"update".into())
    ));
    assert!(
        rules
            .iter()
            .all(|r| r.resources == Some(vec!["leases".into()]))
    );
    assert_eq!(objects.role_binding.role_ref.name, "printfleet-shard-1");
    assert_eq!(
        objects.role_binding.subjects.expect("subjects")[0].name,
        "printfleet-shard-1"
    );
}

#[test]
fn service_and_monitor_select_every_spooler_pod() {
    let queues = [queue("a", &["p"], None), queue("b", &["p"], None)];
    let service = submission_service("office", &queues);
    let spec = service.spec.expect("spec");
    assert_eq!(spec.selector, Some(spooler_labels()));
    assert!(!spooler_labels().contains_key(SHARD_LABEL));
    assert_eq!(spec.ports.expect("ports")[0].port, SERVICE_PORT);
    assert_eq!(service.metadata.owner_references.map(|o| o.len()), Some(2));
    let monitor = service_monitor("office", queue_owners(&queues));
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "printfleet-spooler"
    );
    assert_eq!(
        queue_endpoint("office", "a"),
        "ipp://printfleet.office.svc:631/ipp/print/a"
    );
}

#[test]
fn shared_store_flags_go_together() {
    let flags = |dsn: Option<&str>, url: Option<&str>| {
        SharedStore::from_flags(
            dsn.map(str::to_owned),
            url.map(str::to_owned),
            None,
            None,
            None,
        )
    };
    assert_eq!(flags(None, None), Ok(None));
    assert_eq!(
        flags(Some("store"), None),
        Err(SharedStoreError::Incomplete)
    );
    assert_eq!(
        flags(None, Some("s3://bucket")),
        Err(SharedStoreError::Incomplete)
    );
    assert_eq!(
        flags(Some("store"), Some("/var/documents")),
        Err(SharedStoreError::DocumentsUrl("/var/documents".into()))
    );
    assert_eq!(
        flags(Some("store"), Some("s3://")),
        Err(SharedStoreError::DocumentsUrl("s3://".into()))
    );
    let store = flags(Some("store"), Some("s3://bucket/prefix"))
        .expect("valid")
        .expect("shared");
    assert_eq!(store.documents_url, "s3://bucket/prefix");
}

/// The spooler container and replica count of shard 0 of one queue under `spooler`.
fn spooler_pod(
    spooler: &SpoolerSettings,
) -> (Option<i32>, Option<BTreeMap<String, String>>, PodSpec) {
    let inv = inventory(
        vec![ipp_printer("p1")],
        vec![queue("a", &["p1"], None)],
        vec![],
    );
    let shards = ShardSettings {
        replicas_per_shard: 3,
        ..ShardSettings::default()
    };
    let objects = shard_objects(
        "office",
        0,
        &plan_of(&[(0, &["a"])]),
        &inv,
        &shards,
        spooler,
    )
    .expect("builds");
    let spec = objects.deployment.spec.expect("spec");
    let annotations = spec
        .template
        .metadata
        .and_then(|metadata| metadata.annotations);
    (spec.replicas, annotations, spec.template.spec.expect("pod"))
}

#[test]
fn without_a_shared_store_a_shard_is_one_pod_that_reloads_its_config_in_place() {
    let (replicas, annotations, pod) = spooler_pod(&SpoolerSettings::default());
    assert_eq!(replicas, Some(1), "two pods would be two separate stores");
    assert!(
        annotations.is_none_or(|a| !a.contains_key(CONFIG_HASH_ANNOTATION)),
        "a config change must not replace the pod holding the jobs"
    );
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    assert!(!args.iter().any(|arg| arg == "--documents-url"), "{args:?}");
    let env = container.env.clone().unwrap_or_default();
    assert!(!env.iter().any(|var| var.name == "PRINTFLEET_STORE_DSN"));
}

#[test]
fn a_shared_store_reaches_every_replica_from_secrets() {
    let (replicas, annotations, pod) = spooler_pod(&shared_spooler());
    assert_eq!(replicas, Some(3));
    assert!(annotations.is_some_and(|a| a.contains_key(CONFIG_HASH_ANNOTATION)));
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    let value_of = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|index| args.get(index + 1))
            .map(String::as_str)
    };
    assert_eq!(
        value_of("--documents-url"),
        Some("s3://print-documents/office")
    );
    assert_eq!(value_of("--replicas"), Some("3"));
    assert_eq!(value_of("--s3-endpoint"), Some("http://minio.storage:9000"));
    assert_eq!(value_of("--s3-region"), None);
    assert_eq!(value_of("--s3-credentials-dir"), Some(S3_CREDENTIALS_DIR));
    // The DSN holds a password: it comes from the Secret, never written into the spec.
    let env = container.env.clone().unwrap_or_default();
    let dsn = env
        .iter()
        .find(|var| var.name == "PRINTFLEET_STORE_DSN")
        .expect("DSN variable");
    assert_eq!(dsn.value, None);
    let secret = dsn
        .value_from
        .as_ref()
        .and_then(|from| from.secret_key_ref.as_ref())
        .expect("from a Secret");
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("spooler-store", STORE_DSN_KEY)
    );
    let s3_volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|volume| volume.name == "s3-credentials")
        .and_then(|volume| volume.secret)
        .and_then(|secret| secret.secret_name);
    assert_eq!(s3_volume.as_deref(), Some("spooler-s3"));
    let mounted = container
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .any(|mount| mount.name == "s3-credentials" && mount.mount_path == S3_CREDENTIALS_DIR);
    assert!(mounted);
}
