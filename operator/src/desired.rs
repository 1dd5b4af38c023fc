//! The objects a namespace should contain: per shard a Deployment of spooler pods, its
//! config ConfigMap, a PodDisruptionBudget and RBAC for the shard's Lease; per namespace one
//! submission Service and, where the API exists, a ServiceMonitor.
//!
//! Submissions reach any spooler pod of the namespace through the one Service, so every
//! shard's ConfigMap holds the same configuration: every servable queue of the namespace,
//! each annotated with the shard that dispatches it ([`SHARD_ANNOTATION`]). A pod accepts
//! jobs for any queue and dispatches only the queues of its own `--shard`.
//!
//! Deleting a PrintQueue removes it from that configuration. The spooler then refuses new
//! submissions to it (`client-error-not-found`), as CUPS does for a deleted printer, while
//! the jobs it already accepted stay in the store, held and not printed: they print if a
//! queue of that name comes back (a GitOps prune and re-create, a rename undone), and
//! retention expires them otherwise. Nothing acknowledged is dropped by a manifest change;
//! to drain a queue first, stop submissions to it (access rules) and delete it when its
//! `status.depth` is 0.
//!
//! Everything here is a pure function of the printfleet objects and the operator's settings.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use printfleet_crds::validate::{validate_policy, validate_printer, validate_queue};
use printfleet_crds::{API_VERSION, AccountingPolicy, PrintQueue, Printer, SecretKeyRef};
use ring::digest::{SHA256, digest};
use serde::Serialize;

use crate::shard::{ShardSettings, shard_name};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "printfleet-operator";
/// Name of the submission Service (and ServiceMonitor) of a namespace.
pub const SERVICE_NAME: &str = "printfleet";
/// Port users print to on the Service (the IPP port).
pub const SERVICE_PORT: i32 = 631;
/// Port the spooler listens on inside its pod (IPP, health and metrics).
pub const SPOOLER_PORT: i32 = 8631;
/// Pod template annotation holding the hash of the shard's configuration, so a config
/// change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "printfleet.io/config-hash";
/// Label carrying a shard index on every shard object.
pub const SHARD_LABEL: &str = "printfleet.io/shard";
/// Annotation on each PrintQueue of the rendered configuration: the name of the shard
/// that dispatches it (the spooler's `--shard`); the API crate owns the name.
pub use printfleet_crds::SHARD_ANNOTATION;
/// Key of the spooler configuration in the shard's ConfigMap.
pub const CONFIG_KEY: &str = "printfleet.yaml";
/// Where Secrets are mounted: `<dir>/<secret name>/<key>`, as the spooler's `--secrets-dir`.
pub const SECRETS_DIR: &str = "/etc/printfleet/secrets";
const CONFIG_DIR: &str = "/etc/printfleet/config";
const STATE_DIR: &str = "/var/lib/printfleet";
/// The unprivileged user of distroless images.
const NON_ROOT_UID: i64 = 65532;

/// How spooler pods are built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolerSettings {
    pub image: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// The job and document stores a shard's pods share; `None`: each shard is one pod
    /// with its own SQLite store in the pod.
    pub shared_store: Option<SharedStore>,
}

/// PostgreSQL and S3-compatible object storage shared by the pods of every shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedStore {
    /// Secret, in each namespace with queues, whose key [`STORE_DSN_KEY`] is the
    /// PostgreSQL DSN (it holds a password: never in the pod spec itself).
    pub dsn_secret: String,
    /// `s3://bucket[/prefix]` of the documents.
    pub documents_url: String,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// Secret, in each namespace with queues, with `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`; `None`: the pods' own identity (e.g. IRSA).
    pub s3_credentials_secret: Option<String>,
}

/// Why the shared store settings cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SharedStoreError {
    #[error(
        "--spooler-store-secret and --spooler-documents-url go together: a shard's pods share both the job store and the documents"
    )]
    Incomplete,
    #[error("--spooler-documents-url must be s3://bucket[/prefix], not {0:?}")]
    DocumentsUrl(String),
}

impl SharedStore {
    /// The shared store from the operator's flags: `None` when neither the DSN Secret nor
    /// the documents URL is given; an error when only one is, or the URL is not `s3://`.
    pub fn from_flags(
        dsn_secret: Option<String>,
        documents_url: Option<String>,
        s3_endpoint: Option<String>,
        s3_region: Option<String>,
        s3_credentials_secret: Option<String>,
    ) -> Result<Option<SharedStore>, SharedStoreError> {
        match (dsn_secret, documents_url) {
            (None, None) => Ok(None),
            (Some(dsn_secret), Some(documents_url)) => {
                let bucket = documents_url.strip_prefix("s3://").unwrap_or_default();
                if bucket.is_empty() || bucket.starts_with('/') {
                    return Err(SharedStoreError::DocumentsUrl(documents_url));
                }
                Ok(Some(SharedStore {
                    dsn_secret,
                    documents_url,
                    s3_endpoint,
                    s3_region,
                    s3_credentials_secret,
                }))
            }
            _ => Err(SharedStoreError::Incomplete),
        }
    }
}

/// Key of the PostgreSQL DSN in [`SharedStore::dsn_secret`].
pub const STORE_DSN_KEY: &str = "dsn";
/// Where the S3 credentials Secret is mounted in a spooler pod.
const S3_CREDENTIALS_DIR: &str = "/etc/printfleet/s3";

impl Default for SpoolerSettings {
    fn default() -> Self {
        Self {
            image: "ghcr.io/printfleet/printfleet-spooler:latest".into(),
            cpu_request: "100m".into(),
            memory_request: "128Mi".into(),
            memory_limit: "512Mi".into(),
            shared_store: None,
        }
    }
}

/// Labels every spooler object carries; the submission Service selects pods by these.
pub fn spooler_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "printfleet-spooler".into()),
        ("app.kubernetes.io/component".into(), "spooler".into()),
        ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
    ])
}

/// Labels of one shard's objects and pods.
pub fn shard_labels(shard: u32) -> BTreeMap<String, String> {
    let mut labels = spooler_labels();
    labels.insert(SHARD_LABEL.into(), shard.to_string());
    labels
}

/// The printfleet objects of one namespace.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub printers: BTreeMap<String, Printer>,
    pub queues: BTreeMap<String, PrintQueue>,
    pub policies: BTreeMap<String, AccountingPolicy>,
}

/// Why a queue cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// The queue's own spec is invalid.
    Invalid(String),
    /// Printers it names that do not exist.
    PrinterNotFound(Vec<String>),
    /// Printers it names that exist but are invalid.
    PrinterInvalid(Vec<String>),
    /// Its accounting policy does not exist.
    PolicyNotFound(String),
    /// Its accounting policy exists but is invalid.
    PolicyInvalid(String),
}

impl Inventory {
    /// Whether `queue` can be served: its spec is valid and everything it names exists and
    /// is valid. Only such queues go into a shard's configuration, because the spooler
    /// refuses a configuration with a dangling reference.
    pub fn resolve(&self, queue: &PrintQueue) -> Result<(), Unresolved> {
        if let Err(errors) = validate_queue(&queue.spec) {
            return Err(Unresolved::Invalid(join_errors(&errors)));
        }
        let missing: Vec<String> = queue
            .spec
            .printers
            .iter()
            .filter(|name| !self.printers.contains_key(*name))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Unresolved::PrinterNotFound(missing));
        }
        let invalid: Vec<String> = queue
            .spec
            .printers
            .iter()
            .filter(|name| {
                self.printers
                    .get(*name)
                    .is_some_and(|printer| validate_printer(&printer.spec).is_err())
            })
            .cloned()
            .collect();
        if !invalid.is_empty() {
            return Err(Unresolved::PrinterInvalid(invalid));
        }
        if let Some(policy_name) = &queue.spec.accounting_policy {
            match self.policies.get(policy_name) {
                None => return Err(Unresolved::PolicyNotFound(policy_name.clone())),
                Some(policy) if validate_policy(&policy.spec).is_err() => {
                    return Err(Unresolved::PolicyInvalid(policy_name.clone()));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The queues that can be served, in name order.
    fn servable(&self) -> impl Iterator<Item = &PrintQueue> {
        self.queues
            .values()
            .filter(|queue| self.resolve(queue).is_ok())
    }
}

pub(crate) fn join_errors(errors: &[printfleet_crds::validate::FieldError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("; ")
}

/// One document of the spooler's configuration file.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDocument<'a, S> {
    api_version: &'static str,
    kind: &'static str,
    metadata: ConfigMetadata<'a>,
    spec: &'a S,
}

#[derive(Serialize)]
struct ConfigMetadata<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'static str, String>,
}

fn config_document<S: Serialize>(
    kind: &'static str,
    metadata: ConfigMetadata<'_>,
    spec: &S,
) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&ConfigDocument {
        api_version: API_VERSION,
        kind,
        metadata,
        spec,
    })
}

fn plain_metadata(name: &str) -> ConfigMetadata<'_> {
    ConfigMetadata {
        name,
        annotations: BTreeMap::new(),
    }
}

/// Which shard dispatches each queue, from a plan (shard -> queues).
pub fn shard_by_queue(plan: &BTreeMap<u32, Vec<String>>) -> BTreeMap<&str, u32> {
    plan.iter()
        .flat_map(|(shard, queues)| queues.iter().map(move |queue| (queue.as_str(), *shard)))
        .collect()
}

/// The spooler configuration of a namespace, the same for each of its shards: every
/// servable queue annotated with the shard `plan` gives it, and the printers and policies
/// those queues name, as multi-document YAML (policies, printers, queues, each sorted by
/// name). A queue the plan does not place is left out.
pub fn render_config(
    inventory: &Inventory,
    plan: &BTreeMap<u32, Vec<String>>,
) -> Result<String, serde_yaml::Error> {
    let placement = shard_by_queue(plan);
    let queues: Vec<(&PrintQueue, u32)> = inventory
        .servable()
        .filter_map(|queue| {
            let shard = placement.get(queue.metadata.name.as_deref()?)?;
            Some((queue, *shard))
        })
        .collect();
    let printers: BTreeSet<&String> = queues.iter().flat_map(|(q, _)| &q.spec.printers).collect();
    let policies: BTreeSet<&String> = queues
        .iter()
        .filter_map(|(q, _)| q.spec.accounting_policy.as_ref())
        .collect();
    let mut documents = Vec::new();
    for name in policies {
        if let Some(policy) = inventory.policies.get(name) {
            documents.push(config_document(
                "AccountingPolicy",
                plain_metadata(name),
                &policy.spec,
            )?);
        }
    }
    for name in printers {
        if let Some(printer) = inventory.printers.get(name) {
            documents.push(config_document(
                "Printer",
                plain_metadata(name),
                &printer.spec,
            )?);
        }
    }
    for (queue, shard) in queues {
        let metadata = ConfigMetadata {
            name: queue.metadata.name.as_deref().unwrap_or_default(),
            annotations: BTreeMap::from([(SHARD_ANNOTATION, shard_name(shard))]),
        };
        documents.push(config_document("PrintQueue", metadata, &queue.spec)?);
    }
    Ok(documents
        .iter()
        .map(|doc| format!("---\n{doc}"))
        .collect::<String>())
}

/// Hex SHA-256 of a rendered configuration.
pub fn config_hash(config: &str) -> String {
    digest(&SHA256, config.as_bytes())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The Secret keys the spooler pods of a namespace need, by Secret name: printer
/// credentials and CA bundles and queue credentials files of the servable queues (every pod
/// authenticates submissions to any queue and holds the whole configuration).
pub fn secret_keys(inventory: &Inventory) -> BTreeMap<String, BTreeSet<String>> {
    let mut refs: Vec<&SecretKeyRef> = Vec::new();
    for queue in inventory.servable() {
        refs.extend(&queue.spec.access.credentials);
        for printer in queue
            .spec
            .printers
            .iter()
            .filter_map(|p| inventory.printers.get(p))
        {
            refs.extend(&printer.spec.credentials);
            refs.extend(&printer.spec.ca_bundle);
        }
    }
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for secret in refs {
        keys.entry(secret.name.clone())
            .or_default()
            .insert(secret.key.clone());
    }
    keys
}

/// Owner references to every queue of a shard, so the shard's objects are garbage
/// collected when the last of its queues is deleted (none is the controller: the shard
/// belongs to all of them).
pub fn queue_owners<'a>(queues: impl IntoIterator<Item = &'a PrintQueue>) -> Vec<OwnerReference> {
    queues
        .into_iter()
        .filter_map(|queue| {
            Some(OwnerReference {
                api_version: PrintQueue::api_version(&()).into_owned(),
                kind: PrintQueue::kind(&()).into_owned(),
                name: queue.metadata.name.clone()?,
                uid: queue.metadata.uid.clone()?,
                ..OwnerReference::default()
            })
        })
        .collect()
}

/// Everything one shard consists of.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShardObjects {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub pod_disruption_budget: PodDisruptionBudget,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
}

/// Builds the objects of shard `shard` of `namespace` under `plan` (shard -> queues).
pub fn shard_objects(
    namespace: &str,
    shard: u32,
    plan: &BTreeMap<u32, Vec<String>>,
    inventory: &Inventory,
    shards: &ShardSettings,
    spooler: &SpoolerSettings,
) -> Result<ShardObjects, serde_yaml::Error> {
    let name = shard_name(shard);
    let labels = shard_labels(shard);
    let owners = queue_owners(
        plan.get(&shard)
            .into_iter()
            .flatten()
            .filter_map(|q| inventory.queues.get(q)),
    );
    let metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels.clone()),
        owner_references: Some(owners),
        ..ObjectMeta::default()
    };
    let config = render_config(inventory, plan)?;
    let hash = config_hash(&config);
    let secrets = secret_keys(inventory);
    let selector = LabelSelector {
        match_labels: Some(labels.clone()),
        ..LabelSelector::default()
    };
    Ok(ShardObjects {
        config_map: ConfigMap {
            metadata: metadata.clone(),
            data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), config)])),
            ..ConfigMap::default()
        },
        deployment: deployment(&metadata, shard, &hash, &secrets, shards, spooler),
        pod_disruption_budget: PodDisruptionBudget {
            metadata: metadata.clone(),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(selector),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        },
        service_account: ServiceAccount {
            metadata: metadata.clone(),
            ..ServiceAccount::default()
        },
        role: Role {
            metadata: metadata.clone(),
            rules: Some(vec![
                // `create` cannot be limited to a name: Kubernetes does not know it yet.
                PolicyRule {
                    api_groups: Some(vec!["coordination.k8s.io".into()]),
                    resources: Some(vec!["leases".into()]),
                    verbs: vec!["create".into()],
                    ..PolicyRule::default()
                },
                PolicyRule {
                    api_groups: Some(vec!["coordination.k8s.io".into()]),
                    resources: Some(vec!["leases".into()]),
                    resource_names: Some(vec![name.clone()]),
                    verbs: vec!["get".into(), "update".into(), "patch".into()],
                    ..PolicyRule::default()
                },
            ]),
        },
        role_binding: RoleBinding {
            metadata: metadata.clone(),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: name.clone(),
                namespace: Some(namespace.to_owned()),
                ..Subject::default()
            }]),
        },
    })
}

/// Volume name of the n-th mounted Secret (Secret names may be longer than a volume name).
fn secret_volume_name(index: usize) -> String {
    format!("secret-{index}")
}

fn deployment(
    metadata: &ObjectMeta,
    shard: u32,
    config_hash: &str,
    secrets: &BTreeMap<String, BTreeSet<String>>,
    shards: &ShardSettings,
    spooler: &SpoolerSettings,
) -> Deployment {
    let name = metadata.name.clone().unwrap_or_default();
    let labels = shard_labels(shard);
    let selector = LabelSelector {
        match_labels: Some(labels.clone()),
        ..LabelSelector::default()
    };
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "state".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        mount("config", CONFIG_DIR),
        mount("state", STATE_DIR),
        mount("tmp", "/tmp"),
    ];
    for (index, (secret, keys)) in secrets.iter().enumerate() {
        volumes.push(Volume {
            name: secret_volume_name(index),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(
                    keys.iter()
                        .map(|key| KeyToPath {
                            key: key.clone(),
                            path: key.clone(),
                            ..KeyToPath::default()
                        })
                        .collect(),
                ),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            read_only: Some(true),
            ..mount(
                &secret_volume_name(index),
                &format!("{SECRETS_DIR}/{secret}"),
            )
        });
    }
    let mut args = vec![
        "--config".into(),
        format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        "--listen".into(),
        format!("0.0.0.0:{SPOOLER_PORT}"),
        "--state-dir".into(),
        STATE_DIR.into(),
        "--secrets-dir".into(),
        SECRETS_DIR.into(),
        "--log-format".into(),
        "json".into(),
        "--shard".into(),
        name.clone(),
    ];
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        EnvVar {
            name: "PRINTFLEET_SHARD_LEASE".into(),
            value: Some(name.clone()),
            ..EnvVar::default()
        },
    ];
    // Without a shared store a shard's jobs live in its one pod: a second pod would be a
    // second, separate store behind the same Service.
    let replicas = match &spooler.shared_store {
        Some(store) => {
            let replicas = shards.replicas_per_shard.max(1);
            args.extend(shared_store_args(store, replicas));
            env.push(EnvVar {
                name: "PRINTFLEET_STORE_DSN".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: store.dsn_secret.clone(),
                        key: STORE_DSN_KEY.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
            if let Some(secret) = &store.s3_credentials_secret {
                volumes.push(Volume {
                    name: "s3-credentials".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(secret.clone()),
                        default_mode: Some(0o440),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                });
                mounts.push(VolumeMount {
                    read_only: Some(true),
                    ..mount("s3-credentials", S3_CREDENTIALS_DIR)
                });
            }
            replicas
        }
        None => 1,
    };
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("ipp".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let container = Container {
        name: "spooler".into(),
        image: Some(spooler.image.clone()),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("ipp".into()),
            container_port: SPOOLER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity(spooler.cpu_request.clone())),
                ("memory".into(), Quantity(spooler.memory_request.clone())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity(spooler.memory_limit.clone()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let pod_affinity_term = |topology_key: &str| PodAffinityTerm {
        label_selector: Some(selector.clone()),
        topology_key: topology_key.into(),
        ..PodAffinityTerm::default()
    };
    Deployment {
        metadata: metadata.clone(),
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: selector.clone(),
            // A new pod is ready before an old one stops: a config roll never empties the shard.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    // With a shared store a config change rolls the pods (nothing is in
                    // them); a lone pod holds its jobs, so it reloads the mounted
                    // ConfigMap in place instead (the spooler watches its config file).
                    annotations: spooler.shared_store.as_ref().map(|_| {
                        BTreeMap::from([(CONFIG_HASH_ANNOTATION.into(), config_hash.into())])
                    }),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(NON_ROOT_UID),
                        run_as_group: Some(NON_ROOT_UID),
                        fs_group: Some(NON_ROOT_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    // Preferred, not required: a one-node cluster still runs both replicas.
                    affinity: Some(k8s_openapi::api::core::v1::Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![
                                WeightedPodAffinityTerm {
                                    weight: 100,
                                    pod_affinity_term: pod_affinity_term("kubernetes.io/hostname"),
                                },
                            ]),
                            ..PodAntiAffinity::default()
                        }),
                        ..Default::default()
                    }),
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "topology.kubernetes.io/zone".into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(selector),
                        ..TopologySpreadConstraint::default()
                    }]),
                    termination_grace_period_seconds: Some(30),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

/// The spooler's flags for the shared stores, run as one of `replicas` pods.
fn shared_store_args(store: &SharedStore, replicas: u32) -> Vec<String> {
    let mut args = vec![
        "--documents-url".into(),
        store.documents_url.clone(),
        "--replicas".into(),
        replicas.to_string(),
    ];
    for (flag, value) in [
        ("--s3-endpoint", store.s3_endpoint.as_ref()),
        ("--s3-region", store.s3_region.as_ref()),
    ] {
        if let Some(value) = value {
            args.extend([flag.to_owned(), value.clone()]);
        }
    }
    if store.s3_credentials_secret.is_some() {
        args.extend(["--s3-credentials-dir".into(), S3_CREDENTIALS_DIR.into()]);
    }
    args
}

fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The submission Service of a namespace, in front of every spooler pod, owned by all its
/// queues.
pub fn submission_service<'a>(
    namespace: &str,
    queues: impl IntoIterator<Item = &'a PrintQueue>,
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(SERVICE_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(spooler_labels()),
            owner_references: Some(queue_owners(queues)),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(spooler_labels()),
            ports: Some(vec![ServicePort {
                name: Some("ipp".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("ipp".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The ServiceMonitor (Prometheus Operator) scraping every spooler pod of a namespace.
pub fn service_monitor(namespace: &str, owners: Vec<OwnerReference>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {
            "name": SERVICE_NAME,
            "namespace": namespace,
            "labels": spooler_labels(),
            "ownerReferences": owners,
        },
        "spec": {
            "selector": { "matchLabels": spooler_labels() },
            "endpoints": [{ "port": "ipp", "path": "/metrics", "interval": "30s" }],
        },
    })
}

/// The IPP URI users print to for `queue` in `namespace`.
pub fn queue_endpoint(namespace: &str, queue: &str) -> String {
    format!("ipp://{SERVICE_NAME}.{namespace}.svc:{SERVICE_PORT}/ipp/print/{queue}")
}

#[cfg(test)]
mod tests;
