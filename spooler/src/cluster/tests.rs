use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;
use crate::store::ObjectDocumentStore;

fn cluster(replicas: u32) -> ClusterOptions {
    ClusterOptions {
        store_dsn: Some("host=127.0.0.1 port=5432 user=printfleet".into()),
        documents_url: Some("s3://printfleet/jobs".into()),
        replicas,
        ..ClusterOptions::default()
    }
}

#[test]
fn one_standalone_pod_needs_no_shared_store() {
    let standalone = ClusterOptions {
        replicas: 1,
        ..ClusterOptions::default()
    };
    assert_eq!(standalone.check(), Ok(()));
}

#[test]
fn several_replicas_are_refused_with_sqlite_or_local_documents() {
    let sqlite = ClusterOptions {
        store_dsn: None,
        ..cluster(3)
    };
    assert_eq!(
        sqlite.check(),
        Err(ClusterError::PrivateJobStore { replicas: 3 })
    );
    let local_documents = ClusterOptions {
        documents_url: None,
        ..cluster(2)
    };
    assert_eq!(
        local_documents.check(),
        Err(ClusterError::PrivateDocumentStore { replicas: 2 })
    );
    assert!(
        sqlite
            .check()
            .is_err_and(|error| error.to_string().contains("--store-dsn"))
    );
}

#[test]
fn zero_replicas_empty_identity_and_stray_s3_flags_are_refused() {
    assert_eq!(cluster(0).check(), Err(ClusterError::NoReplicas));
    let nameless = ClusterOptions {
        claimer_id: Some(String::new()),
        ..cluster(1)
    };
    assert_eq!(nameless.check(), Err(ClusterError::EmptyClaimerId));
    let stray = ClusterOptions {
        documents_url: None,
        s3_region: Some("eu-west-1".into()),
        ..cluster(1)
    };
    assert_eq!(
        stray.check(),
        Err(ClusterError::S3WithoutUrl {
            flag: "--s3-region"
        })
    );
}

#[test]
fn s3_settings_carry_endpoint_region_and_secret_dir() {
    let options = ClusterOptions {
        s3_endpoint: Some("http://127.0.0.1:9000".into()),
        s3_region: Some("eu-west-1".into()),
        s3_credentials_dir: Some(PathBuf::from("/var/run/secrets/s3")),
        ..cluster(3)
    };
    let settings = options.s3_settings().expect("a documents URL is set");
    assert_eq!(settings.url, "s3://printfleet/jobs");
    assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(settings.region.as_deref(), Some("eu-west-1"));
    assert_eq!(
        settings.credentials,
        S3Credentials::SecretDir(PathBuf::from("/var/run/secrets/s3"))
    );
    let environment = cluster(3).s3_settings().expect("a documents URL is set");
    assert_eq!(environment.credentials, S3Credentials::Environment);
    assert!(ClusterOptions::default().s3_settings().is_none());
}

#[test]
fn an_s3_url_without_a_bucket_is_refused_before_any_request() {
    for url in ["s3://", "s3:///jobs", "printfleet/jobs"] {
        let options = ClusterOptions {
            documents_url: Some(url.into()),
            ..cluster(3)
        };
        let settings = options.s3_settings().expect("a documents URL is set");
        let error = ObjectDocumentStore::connect(&settings)
            .err()
            .unwrap_or_else(|| panic!("{url} accepted"));
        assert!(
            error.to_string().contains("invalid object store URL"),
            "{url}: {error}"
        );
    }
}

#[test]
fn the_claimer_is_the_pod_name_in_cluster_mode() {
    let host = || Some("spooler-2".to_string());
    assert_eq!(cluster(3).claimer_id(host()), "spooler-2");
    let explicit = ClusterOptions {
        claimer_id: Some("east-0".into()),
        ..cluster(3)
    };
    assert_eq!(explicit.claimer_id(host()), "east-0");
    assert_eq!(
        ClusterOptions::default().claimer_id(host()),
        STANDALONE_CLAIMER
    );
    assert_eq!(cluster(3).claimer_id(None), STANDALONE_CLAIMER);
    let leased_sqlite_pod = ClusterOptions {
        shard: Some("printfleet-shard-0".into()),
        shard_lease: Some("printfleet-shard-0".into()),
        ..ClusterOptions::default()
    };
    assert_eq!(leased_sqlite_pod.claimer_id(host()), "spooler-2");
}

#[test]
fn several_replicas_need_a_shard_lease_and_the_lease_a_shard() {
    let leased = ClusterOptions {
        shard: Some("printfleet-shard-0".into()),
        shard_lease: Some("printfleet-shard-0".into()),
        ..cluster(3)
    };
    assert_eq!(
        ClusterOptions {
            shard_lease: None,
            ..leased.clone()
        }
        .check(),
        Err(ClusterError::UnledReplicas { replicas: 3 })
    );
    assert_eq!(
        ClusterOptions {
            shard: None,
            ..leased.clone()
        }
        .check(),
        Err(ClusterError::LeaseWithoutShard)
    );
    assert_eq!(
        leased.dispatch_role(),
        DispatchRole::LeasedShard {
            shard: "printfleet-shard-0".into(),
            lease: "printfleet-shard-0".into()
        }
    );
    let one_pod = ClusterOptions {
        shard: Some("east".into()),
        ..cluster(1)
    };
    assert_eq!(one_pod.check(), Ok(()));
    assert_eq!(
        one_pod.dispatch_role(),
        DispatchRole::Shard {
            shard: "east".into()
        }
    );
    assert_eq!(
        ClusterOptions::default().dispatch_role(),
        DispatchRole::Standalone
    );
}

#[test]
fn retry_delays_double_up_to_a_cap_and_fill_the_budget() {
    let delays = retry_delays(Duration::from_secs(20));
    assert_eq!(delays.iter().sum::<Duration>(), Duration::from_secs(20));
    assert_eq!(delays[0], Duration::from_millis(250));
    assert_eq!(delays[1], Duration::from_millis(500));
    assert!(delays.iter().all(|delay| *delay <= Duration::from_secs(5)));
    assert!(retry_delays(Duration::ZERO).is_empty());
}

#[tokio::test]
async fn unreachable_postgres_is_retried_for_the_budget_then_reported() {
    // A port nothing listens on: connections are refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres connect_timeout=1");
    let started = Instant::now();
    let error = connect_postgres(&dsn, Duration::from_secs(2))
        .await
        .err()
        .expect("nothing listens there");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, ClusterError::StoreUnreachable { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("unreachable after 2s"),
        "{error}"
    );
}

#[tokio::test]
async fn a_malformed_dsn_fails_at_once() {
    let started = Instant::now();
    let error = connect_postgres("host=127.0.0.1 port=notaport", Duration::from_secs(30))
        .await
        .err()
        .expect("not a DSN");
    assert!(matches!(error, ClusterError::Store(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
