//! The fixtures themselves work against the real engine: images build, a real registry serves
//! what was pushed to it, and the test application answers its health check in a container.
//! `scripts/test` runs this target first, so a broken Docker setup fails early and clearly.

use flotilla_tests::fixtures::{
    self, docker, ensure_db_image, ensure_test_images, http_request, start_registry,
    start_registry_with_auth, unique_name, wait_for_http_status, DbContainer, DbEngine,
    DB_BUILD_LABEL, TESTAPP_PORT, TEST_LABEL, VARIANT_LABEL,
};
use std::time::Duration;

/// Removes a container when the test ends, passed or failed.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = docker(&["rm", "--force", "--volumes", &self.0]);
    }
}

/// Removes an image reference when the test ends.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "--force", &self.0]);
    }
}

fn image_id(reference: &str) -> String {
    docker(&["image", "inspect", "--format", "{{.Id}}", reference])
        .unwrap_or_else(|e| panic!("inspect {reference}: {e:#}"))
        .trim()
        .to_string()
}

#[test]
fn docker_engine_is_reachable() {
    fixtures::docker_available().expect("the end-to-end tests need the Docker engine");
}

#[test]
fn images_build_idempotently_and_round_trip_through_a_real_registry() {
    let images = ensure_test_images().expect("build test images");
    assert_eq!(images.v1, "flotilla-testapp:v1");
    assert_eq!(images.v2, "flotilla-testapp:v2");
    assert_eq!(images.broken, "flotilla-testapp:broken");
    // A second call finds everything current and changes nothing.
    let ids: Vec<String> = images.all().iter().map(|(_, t)| image_id(t)).collect();
    assert_eq!(ensure_test_images().expect("second call"), images);
    let again: Vec<String> = images.all().iter().map(|(_, t)| image_id(t)).collect();
    assert_eq!(ids, again, "a current image must not be rebuilt");
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "every variant is its own image");
    for (variant, tag) in images.all() {
        assert_eq!(tag, format!("flotilla-testapp:{variant}"));
        let label = docker(&[
            "image",
            "inspect",
            "--format",
            &format!("{{{{index .Config.Labels \"{VARIANT_LABEL}\"}}}}"),
            tag,
        ])
        .expect("inspect variant label");
        assert_eq!(label.trim(), variant, "{tag} names its variant");
    }

    let registry = start_registry().expect("start docker-registry");
    let repo = unique_name("fixtures/testapp");
    let mut pushed = Vec::new();
    for (local, tag) in [
        (&images.v1, "v1"),
        (&images.v2, "v2"),
        (&images.broken, "broken"),
    ] {
        let reference = registry
            .push(local, &format!("{repo}:{tag}"))
            .unwrap_or_else(|e| panic!("push {local}: {e:#}"));
        assert_eq!(reference, format!("{}/{repo}:{tag}", registry.host()));
        pushed.push(ImageGuard(reference));
    }

    // Pull v2 back by digest after dropping every local name for it in this registry, so the
    // bytes must come from the registry.
    let digest = registry
        .manifest_digest(&repo, "v2")
        .expect("manifest digest");
    assert!(digest.starts_with("sha256:"), "{digest}");
    docker(&["rmi", &registry.reference(&format!("{repo}:v2"))]).expect("untag pushed v2");
    let by_digest = format!("{}/{repo}@{digest}", registry.host());
    let _pulled = ImageGuard(by_digest.clone());
    docker(&["pull", "--quiet", &by_digest]).expect("pull v2 by digest from the registry");
    assert_eq!(
        image_id(&by_digest),
        ids[1],
        "the image pulled by digest must be the v2 that was pushed"
    );

    // The registry knows nothing it was not given.
    assert!(registry.manifest_digest(&repo, "v3").is_err());
}

#[test]
fn v1_container_serves_health_and_version() {
    let images = ensure_test_images().expect("build test images");
    let name = unique_name("flotilla-fixtures-v1");
    let label = format!("{TEST_LABEL}=1");
    let port = format!("127.0.0.1::{TESTAPP_PORT}");
    docker(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--label",
        &label,
        "--publish",
        &port,
        &images.v1,
    ])
    .expect("docker run v1");
    let _guard = ContainerGuard(name.clone());
    let published = docker(&["port", &name, &format!("{TESTAPP_PORT}/tcp")]).expect("docker port");
    let host_port = published
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no loopback port published: {published:?}"))
        .trim()
        .to_string();

    wait_for_http_status(&host_port, "/health", 200, Duration::from_secs(30))
        .expect("v1 answers /health with 200");
    let root = fixtures::http_get(&host_port, "/").expect("GET /");
    assert_eq!(root.status, 200);
    let json: serde_json::Value = serde_json::from_str(&root.body).expect("GET / returns JSON");
    assert_eq!(
        json,
        serde_json::json!({"version": "v1", "mode": "healthy"})
    );

    // The built-in health probe works inside the container (the image has no shell or curl).
    docker(&["exec", &name, "/testapp", "--healthcheck"]).expect("--healthcheck exits 0");

    // SIGTERM ends it promptly with status 0, not after docker's 10 s kill timeout.
    let started = std::time::Instant::now();
    docker(&["stop", "--time", "10", &name]).expect("docker stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "testapp took {:?} to stop on SIGTERM",
        started.elapsed()
    );
    let exit = docker(&["inspect", "--format", "{{.State.ExitCode}}", &name]).expect("inspect");
    assert_eq!(exit.trim(), "0");
    let logs = docker(&["logs", &name]).expect("docker logs");
    assert!(logs.contains("testapp v1 listening on 8080"), "{logs}");
}

#[test]
fn broken_image_exits_with_status_1() {
    let images = ensure_test_images().expect("build test images");
    let name = unique_name("flotilla-fixtures-broken");
    let label = format!("{TEST_LABEL}=1");
    let _guard = ContainerGuard(name.clone());
    // `docker run` without --detach waits for the container and exits with its status.
    let err = docker(&["run", "--name", &name, "--label", &label, &images.broken])
        .expect_err("the broken image must exit non-zero");
    let exit = docker(&["inspect", "--format", "{{.State.ExitCode}}", &name]).expect("inspect");
    assert_eq!(exit.trim(), "1", "{err:#}");
}

/// The health state Docker reports for a container (`starting`, `healthy`, `unhealthy`).
fn health_status(name: &str) -> String {
    docker(&["inspect", "--format", "{{.State.Health.Status}}", name])
        .unwrap_or_else(|e| panic!("inspect {name}: {e:#}"))
        .trim()
        .to_string()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    flotilla_testkit::Poller::new(timeout)
        .every(Duration::from_millis(200))
        .until_blocking(what, || check().then_some(()));
}

#[test]
fn health_variants_turn_healthy_unhealthy_and_crash_later() {
    let images = ensure_test_images().expect("build test images");
    let label = format!("{TEST_LABEL}=1");
    let run = |image: &str, env: &[&str]| {
        let name = unique_name("flotilla-fixtures-health");
        let mut args = vec!["run", "--detach", "--name", &name, "--label", &label];
        for e in env {
            args.extend(["--env", e]);
        }
        args.push(image);
        docker(&args).unwrap_or_else(|e| panic!("docker run {image}: {e:#}"));
        ContainerGuard(name)
    };
    let healthy = run(&images.v2_health, &[]);
    let unhealthy = run(&images.v2_unhealthy, &[]);
    let crash = run(&images.v2_crash_later, &[]);
    // The testapp records its starts in APP_DATA_FILE (the images have no shell to do it).
    let data = tempfile::tempdir().unwrap();
    let data_mount = format!("{}:/data", data.path().display());
    let recorder = unique_name("flotilla-fixtures-data");
    docker(&[
        "run",
        "--detach",
        "--name",
        &recorder,
        "--label",
        &label,
        "--volume",
        &data_mount,
        "--env",
        "APP_DATA_FILE=/data/starts",
        &images.v1,
    ])
    .expect("docker run v1 with a data file");
    let _recorder = ContainerGuard(recorder);

    wait_for("v2-health healthy", Duration::from_secs(30), || {
        health_status(&healthy.0) == "healthy"
    });
    wait_for("v2-unhealthy unhealthy", Duration::from_secs(30), || {
        health_status(&unhealthy.0) == "unhealthy"
    });
    wait_for("v2-crash-later healthy", Duration::from_secs(30), || {
        health_status(&crash.0) == "healthy"
    });
    wait_for("v2-crash-later to exit", Duration::from_secs(30), || {
        docker(&["inspect", "--format", "{{.State.Status}}", &crash.0])
            .map(|s| s.trim() == "exited")
            .unwrap_or(false)
    });
    let exit = docker(&["inspect", "--format", "{{.State.ExitCode}}", &crash.0]).unwrap();
    assert_eq!(exit.trim(), "3", "v2-crash-later exits with status 3");
    wait_for("the data file", Duration::from_secs(30), || {
        std::fs::read_to_string(data.path().join("starts")).unwrap_or_default() == "v1 started\n"
    });
}

#[test]
fn registry_with_auth_serves_only_the_right_credentials() {
    use base64::Engine;
    let images = ensure_test_images().expect("build test images");
    let registry = start_registry_with_auth("flotilla", "s3cret-pw").expect("start registry");
    assert_eq!(registry.credentials(), Some(("flotilla", "s3cret-pw")));
    let repo = unique_name("fixtures/auth");
    // The push logs in with a private client config; the host's stays untouched.
    let home_config =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker/config.json"));
    let before = home_config
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let reference = registry
        .push_remote_only(&images.v1, &format!("{repo}:v1"))
        .expect("push with credentials");
    let after = home_config
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    assert_eq!(before, after, "the host's docker config must not change");

    let basic = |user: &str, pw: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    let path = format!("/v2/{repo}/manifests/v1");
    let accept = (
        "Accept",
        "application/vnd.docker.distribution.manifest.v2+json",
    );
    let status = |headers: &[(&str, &str)]| {
        http_request(&registry.host(), "HEAD", &path, headers)
            .expect("ask the registry")
            .status
    };
    assert_eq!(status(&[accept]), 401, "anonymous");
    let wrong = basic("flotilla", "wrong");
    assert_eq!(
        status(&[accept, ("Authorization", &wrong)]),
        401,
        "wrong password"
    );
    let right = basic("flotilla", "s3cret-pw");
    assert_eq!(
        status(&[accept, ("Authorization", &right)]),
        200,
        "right password"
    );
    // And the engine cannot pull it anonymously (the local tag was removed after the push).
    let err = docker(&["pull", "--quiet", &reference]).expect_err("anonymous pull must fail");
    assert!(
        format!("{err:#}").contains("no basic auth credentials")
            || format!("{err:#}").contains("unauthorized"),
        "{err:#}"
    );
}

// === database servers and the S3 server ===

/// A password with characters that need quoting in SQL, shell and config files.
const DB_PASSWORD: &str = "pw 'with\" quotes\\ & $dollar";

#[test]
fn db_images_build_idempotently_with_the_tools_backups_need() {
    let images = ensure_db_image().expect("build the database test images");
    assert_eq!(images.postgres, "flotilla-test/postgres:15");
    assert_eq!(images.mariadb, "flotilla-test/mariadb:10.11");
    assert_eq!(images.redis, "flotilla-test/redis:7");
    let ids: Vec<String> = DbEngine::ALL
        .iter()
        .map(|e| image_id(images.image(*e)))
        .collect();
    // A second call finds everything current and rebuilds nothing.
    assert_eq!(ensure_db_image().expect("second call"), images);
    let again: Vec<String> = DbEngine::ALL
        .iter()
        .map(|e| image_id(images.image(*e)))
        .collect();
    assert_eq!(ids, again, "a current image must not be rebuilt");
    for engine in DbEngine::ALL {
        let image = images.image(engine);
        let inspect = |format: &str| {
            docker(&["image", "inspect", "--format", format, image])
                .unwrap_or_else(|e| panic!("inspect {image}: {e:#}"))
                .trim()
                .to_string()
        };
        assert_eq!(inspect("{{index .Config.Labels \"flotilla.test\"}}"), "1");
        assert_eq!(
            inspect(&format!(
                "{{{{index .Config.Labels \"{DB_BUILD_LABEL}\"}}}}"
            )),
            images.build_id
        );
        assert_eq!(
            inspect("{{json .Config.Entrypoint}}"),
            "[\"/usr/local/bin/flotilla-db-entrypoint\"]"
        );
        assert_eq!(
            inspect("{{json .Config.Cmd}}"),
            format!("[\"{}\"]", engine.server())
        );
        assert!(
            inspect("{{json .Config.Volumes}}").contains(engine.data_dir()),
            "{image} declares its data directory as a volume"
        );
    }
    // The dump and compression tools the backups run inside the containers.
    let run = |args: &[&str]| {
        let mut full = vec![
            "run",
            "--rm",
            "--label",
            "flotilla.test=1",
            &images.postgres,
        ];
        full.extend_from_slice(args);
        docker(&full).unwrap_or_else(|e| panic!("docker run {args:?}: {e:#}"))
    };
    let versions = run(&[
        "sh",
        "-c",
        "pg_dump --version && pg_dumpall --version && mariadb-dump --version \
         && mysqldump --version && redis-cli --version && zstd --version",
    ]);
    assert!(versions.contains("pg_dump (PostgreSQL) 15."), "{versions}");
    assert!(
        versions.contains("pg_dumpall (PostgreSQL) 15."),
        "{versions}"
    );
    assert!(versions.contains("MariaDB"), "{versions}");
    assert!(versions.contains("redis-cli 7."), "{versions}");
    assert!(versions.contains("Zstandard"), "{versions}");
}

#[test]
fn postgres_container_serves_queries_and_refuses_a_wrong_password() {
    let name = unique_name("flotilla-fixtures-postgres");
    let db = DbContainer::start(
        DbEngine::Postgres,
        &name,
        &[("flotilla.fixture", "postgres")],
        &[
            ("POSTGRES_USER", "app"),
            ("POSTGRES_PASSWORD", DB_PASSWORD),
            ("POSTGRES_DB", "appdb"),
        ],
    )
    .expect("start postgres");
    assert_eq!(db.name(), name);
    assert_eq!(db.user(), "app");
    let label = docker(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"flotilla.fixture\"}} {{index .Config.Labels \"flotilla.test\"}}",
        db.id(),
    ])
    .expect("inspect");
    assert_eq!(label.trim(), "postgres 1");
    // The password is not on any command line: not in the container's config either.
    let config = docker(&[
        "inspect",
        "--format",
        "{{json .Config.Cmd}} {{json .Args}}",
        db.id(),
    ])
    .expect("inspect");
    assert!(!config.contains("quotes"), "{config}");

    db.psql(
        "appdb",
        "CREATE TABLE items (id int PRIMARY KEY, name text);\n\
         INSERT INTO items VALUES (1, 'one'), (2, 'two');",
    )
    .expect("create and fill a table");
    assert_eq!(
        db.psql("appdb", "SELECT id, name FROM items ORDER BY id")
            .expect("query"),
        "1|one\n2|two"
    );
    assert_eq!(
        db.psql("appdb", "SELECT current_user, current_database()")
            .expect("whoami"),
        "app|appdb"
    );
    // SQL errors are errors.
    let err = db.psql("appdb", "SELECT * FROM missing").unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");

    // A wrong password fails over the socket and over TCP; the right one works over TCP.
    for host in ["/run/postgresql", "127.0.0.1"] {
        let host_arg = format!("--host={host}");
        let args = [
            "psql",
            "--no-psqlrc",
            "-At",
            &host_arg,
            "--username=app",
            "--dbname=appdb",
            "--command=SELECT count(*) FROM items",
        ];
        let err = db
            .exec_with(&[("PGPASSWORD", "wrong")], &args, None)
            .expect_err("a wrong password must be refused");
        assert!(
            format!("{err:#}").contains("password authentication failed"),
            "{host}: {err:#}"
        );
        let err = db.exec(&args).expect_err("no password must be refused");
        assert!(format!("{err:#}").contains("password"), "{host}: {err:#}");
        let ok = db
            .exec_with(&[("PGPASSWORD", DB_PASSWORD)], &args, None)
            .expect("the right password");
        assert_eq!(ok.trim(), "2", "{host}");
    }

    // The server is PID 1 as the postgres user, stops cleanly on `docker stop` and keeps its
    // data across a restart (the data directory is a volume).
    let pid1 = db
        .exec(&["sh", "-c", "cat /proc/1/comm; stat -c %U /proc/1"])
        .expect("pid 1");
    assert_eq!(
        pid1.split_whitespace().collect::<Vec<_>>(),
        ["postgres", "postgres"]
    );
    let started = std::time::Instant::now();
    db.stop().expect("docker stop");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "postgres took {:?} to stop",
        started.elapsed()
    );
    let exit = docker(&["inspect", "--format", "{{.State.ExitCode}}", db.id()]).unwrap();
    assert_eq!(exit.trim(), "0", "{}", db.logs());
    db.start_again().expect("start again");
    assert_eq!(
        db.psql("appdb", "SELECT count(*) FROM items")
            .expect("query"),
        "2"
    );
}

#[test]
fn mariadb_container_serves_queries_and_refuses_a_wrong_password() {
    let name = unique_name("flotilla-fixtures-mariadb");
    let db = DbContainer::start(
        DbEngine::Mariadb,
        &name,
        &[],
        &[
            ("MARIADB_ROOT_PASSWORD", DB_PASSWORD),
            ("MARIADB_DATABASE", "shop"),
            ("MARIADB_USER", "shopper"),
            ("MARIADB_PASSWORD", "shopper-pw"),
        ],
    )
    .expect("start mariadb");
    assert_eq!(db.user(), "root");
    db.mariadb(
        "shop",
        "CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(20));\n\
         INSERT INTO orders VALUES (1, 'apple'), (2, 'pear');",
    )
    .expect("create and fill a table");
    assert_eq!(
        db.mariadb("shop", "SELECT id, item FROM orders ORDER BY id")
            .expect("query"),
        "1\tapple\n2\tpear"
    );
    assert_eq!(
        db.mariadb("", "SELECT COUNT(*) FROM shop.orders")
            .expect("query"),
        "2"
    );
    let err = db.mariadb("shop", "SELECT * FROM missing").unwrap_err();
    assert!(format!("{err:#}").contains("doesn't exist"), "{err:#}");

    // Only root@localhost, root@'%', the declared user and mariadb.sys exist; root has no
    // unix_socket authentication.
    let accounts = db
        .mariadb(
            "",
            "SELECT CONCAT(User, '@', Host) FROM mysql.global_priv ORDER BY User, Host",
        )
        .expect("accounts");
    assert_eq!(
        accounts,
        "mariadb.sys@localhost\nroot@%\nroot@localhost\nshopper@%"
    );

    // A wrong password (or none) fails for root over the socket and over TCP.
    for protocol in [
        &["--protocol=socket"][..],
        &["--protocol=tcp", "--host=127.0.0.1"],
    ] {
        let mut args = vec!["mariadb", "--user=root", "--batch", "--skip-column-names"];
        args.extend_from_slice(protocol);
        args.push("--execute=SELECT COUNT(*) FROM shop.orders");
        let err = db
            .exec_with(&[("MYSQL_PWD", "wrong")], &args, None)
            .expect_err("a wrong password must be refused");
        assert!(
            format!("{err:#}").contains("Access denied"),
            "{protocol:?}: {err:#}"
        );
        let err = db.exec(&args).expect_err("no password must be refused");
        assert!(
            format!("{err:#}").contains("Access denied"),
            "{protocol:?}: {err:#}"
        );
        let ok = db
            .exec_with(&[("MYSQL_PWD", DB_PASSWORD)], &args, None)
            .expect("the right password");
        assert_eq!(ok.trim(), "2", "{protocol:?}");
    }
    // The declared user reaches its database with its password.
    let ok = db
        .exec_with(
            &[("MYSQL_PWD", "shopper-pw")],
            &[
                "mariadb",
                "--user=shopper",
                "-N",
                "-B",
                "--execute=SELECT item FROM shop.orders WHERE id = 2",
            ],
            None,
        )
        .expect("shopper");
    assert_eq!(ok.trim(), "pear");

    let pid1 = db
        .exec(&["sh", "-c", "cat /proc/1/comm; stat -c %U /proc/1"])
        .expect("pid 1");
    assert_eq!(
        pid1.split_whitespace().collect::<Vec<_>>(),
        ["mariadbd", "mysql"]
    );
    db.stop().expect("docker stop");
    let exit = docker(&["inspect", "--format", "{{.State.ExitCode}}", db.id()]).unwrap();
    assert_eq!(exit.trim(), "0", "{}", db.logs());
    db.start_again().expect("start again");
    assert_eq!(
        db.mariadb("shop", "SELECT COUNT(*) FROM orders")
            .expect("query"),
        "2"
    );
}

#[test]
fn redis_container_sets_and_gets_with_and_without_a_password() {
    let open = DbContainer::start(
        DbEngine::Redis,
        &unique_name("flotilla-fixtures-redis"),
        &[],
        &[],
    )
    .expect("start redis");
    assert_eq!(
        open.redis(&["SET", "greeting", "hello world"])
            .expect("SET"),
        "OK"
    );
    assert_eq!(
        open.redis(&["GET", "greeting"]).expect("GET"),
        "hello world"
    );
    assert_eq!(
        open.redis(&["CONFIG", "GET", "dir"]).expect("dir"),
        "dir\n/data"
    );
    assert_eq!(
        open.redis(&["CONFIG", "GET", "protected-mode"])
            .expect("protected-mode"),
        "protected-mode\nno"
    );
    // Error replies are errors.
    assert!(open.redis(&["NOSUCHCOMMAND"]).is_err());

    let secured = DbContainer::start(
        DbEngine::Redis,
        &unique_name("flotilla-fixtures-redis"),
        &[],
        &[("REDIS_PASSWORD", DB_PASSWORD)],
    )
    .expect("start redis with a password");
    assert_eq!(secured.redis(&["SET", "k", "v"]).expect("SET"), "OK");
    assert_eq!(secured.redis(&["GET", "k"]).expect("GET"), "v");
    let refused = secured
        .exec(&["redis-cli", "GET", "k"])
        .expect("redis-cli runs");
    assert!(refused.starts_with("NOAUTH"), "{refused:?}");
    let wrong = secured
        .exec_with(
            &[("REDISCLI_AUTH", "wrong")],
            &["redis-cli", "GET", "k"],
            None,
        )
        .map(|out| out.trim().to_string())
        .unwrap_or_else(|e| format!("{e:#}"));
    assert!(
        wrong.contains("WRONGPASS") || wrong.contains("NOAUTH"),
        "{wrong:?}"
    );
}

#[test]
fn s3_server_stores_lists_and_serves_objects() {
    let s3 = fixtures::start_s3().expect("start the S3 server");
    assert!(
        s3.endpoint().starts_with("http://127.0.0.1:"),
        "{}",
        s3.endpoint()
    );
    s3.create_bucket("backups").expect("create bucket");
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    s3.put_object("backups", "pg/app 1.sql.zst", &body)
        .expect("unsigned PUT");
    s3.put_object("backups", "pg/app 2.sql.zst", b"second")
        .expect("PUT");
    s3.put_object("backups", "redis/dump.rdb", b"rdb")
        .expect("PUT");
    assert_eq!(
        s3.list_keys("backups", "pg/").expect("list"),
        ["pg/app 1.sql.zst", "pg/app 2.sql.zst"]
    );
    assert_eq!(s3.list_keys("backups", "").expect("list all").len(), 3);
    assert!(s3
        .list_keys("backups", "mysql/")
        .expect("list none")
        .is_empty());
    assert_eq!(
        s3.get_object("backups", "pg/app 1.sql.zst").expect("GET"),
        body
    );
    assert!(s3.get_object("backups", "pg/missing").is_err());
    assert!(s3.list_keys("no-such-bucket", "").is_err());
}
