//! What differs between database engines: how a container is recognised, where its
//! credentials are, which commands list, dump and restore its databases, and how a complete
//! dump ends. Pure functions: the runner executes the `ExecSpec`s they return.

use crate::docker::ExecSpec;
use flotilla_shared::backup::{BackupEngine, ENGINE_LABEL, OPT_OUT_LABEL};
use std::collections::HashMap;

/// The pseudo-database holding PostgreSQL's roles and tablespaces (`pg_dumpall --globals-only`).
pub const PG_GLOBALS: &str = "_globals";
/// The database name of whole-server dumps (Redis, MongoDB without a database list, command).
pub const WHOLE_SERVER: &str = "_all";

/// Databases never dumped unless named explicitly.
const MYSQL_SYSTEM_DATABASES: [&str; 4] =
    ["information_schema", "performance_schema", "mysql", "sys"];

/// The engine of a container: its `flotilla.backup.engine` label, else its image's name.
/// None when neither says (or the label names an unknown engine, which `label_error` reports).
pub fn detect_engine(image: &str, labels: &HashMap<String, String>) -> Option<BackupEngine> {
    if let Some(v) = labels.get(ENGINE_LABEL) {
        return v.parse().ok();
    }
    let repo = image_repository(image);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    match last {
        "postgres" | "postgresql" | "postgis" | "timescaledb" | "timescaledb-ha" => {
            Some(BackupEngine::Postgres)
        }
        "mysql" | "percona-server" | "percona" => Some(BackupEngine::Mysql),
        "mariadb" => Some(BackupEngine::Mariadb),
        "mongo" | "mongodb" | "mongodb-community-server" => Some(BackupEngine::Mongo),
        "redis" | "redis-stack-server" | "valkey" | "keydb" => Some(BackupEngine::Redis),
        _ => None,
    }
}

/// Why a container's engine label is unusable, if it is.
pub fn label_error(labels: &HashMap<String, String>) -> Option<String> {
    labels
        .get(ENGINE_LABEL)
        .and_then(|v| v.parse::<BackupEngine>().err())
        .map(|e| format!("label {ENGINE_LABEL}: {e}"))
}

/// `flotilla.backup=false` opts a container out of discovery.
pub fn opted_out(labels: &HashMap<String, String>) -> bool {
    labels
        .get(OPT_OUT_LABEL)
        .is_some_and(|v| crate::config::parse_bool(v) == Some(false))
}

/// `registry:5000/team/postgres:15@sha256:...` → `registry:5000/team/postgres`.
fn image_repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        // A colon after the last slash is a tag; one before it belongs to a registry port.
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// Variables the official images also accept as `<VAR>_FILE` (Docker secrets).
pub const SECRET_VARIABLES: [&str; 12] = [
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "MARIADB_ROOT_PASSWORD",
    "MYSQL_ROOT_PASSWORD",
    "MARIADB_USER",
    "MYSQL_USER",
    "MARIADB_PASSWORD",
    "MYSQL_PASSWORD",
    "MONGO_INITDB_ROOT_USERNAME",
    "MONGO_INITDB_ROOT_PASSWORD",
    "REDIS_PASSWORD",
    "POSTGRESQL_PASSWORD",
];

/// Who the dump tools log in as.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Credentials from the container's environment, the way the official images take them;
/// a configured user or password wins.
pub fn credentials(
    engine: BackupEngine,
    env: &HashMap<String, String>,
    user: Option<&str>,
    password: Option<&str>,
) -> Credentials {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    let mut c = match engine {
        BackupEngine::Postgres => Credentials {
            user: get("POSTGRES_USER")
                .or_else(|| get("POSTGRESQL_USERNAME"))
                .or(Some("postgres".into())),
            password: get("POSTGRES_PASSWORD").or_else(|| get("POSTGRESQL_PASSWORD")),
        },
        BackupEngine::Mysql | BackupEngine::Mariadb => {
            let root = get("MARIADB_ROOT_PASSWORD").or_else(|| get("MYSQL_ROOT_PASSWORD"));
            let allow_empty = [
                "MARIADB_ALLOW_EMPTY_ROOT_PASSWORD",
                "MYSQL_ALLOW_EMPTY_PASSWORD",
            ]
            .iter()
            .any(|k| get(k).is_some());
            match root {
                Some(p) => Credentials {
                    user: Some("root".into()),
                    password: Some(p),
                },
                None if allow_empty => Credentials {
                    user: Some("root".into()),
                    password: None,
                },
                None => Credentials {
                    user: get("MARIADB_USER")
                        .or_else(|| get("MYSQL_USER"))
                        .or(Some("root".into())),
                    password: get("MARIADB_PASSWORD").or_else(|| get("MYSQL_PASSWORD")),
                },
            }
        }
        BackupEngine::Mongo => Credentials {
            user: get("MONGO_INITDB_ROOT_USERNAME"),
            password: get("MONGO_INITDB_ROOT_PASSWORD"),
        },
        BackupEngine::Redis => Credentials {
            user: None,
            password: get("REDIS_PASSWORD"),
        },
        BackupEngine::Command => Credentials::default(),
    };
    if let Some(u) = user {
        c.user = Some(u.to_string());
    }
    if let Some(p) = password {
        c.password = Some(p.to_string());
    }
    c
}

fn user(c: &Credentials, default: &str) -> String {
    c.user.clone().unwrap_or_else(|| default.to_string())
}

/// Environment every PostgreSQL tool runs with: the password travels here, never in argv.
fn pg_spec(cmd: &[&str], c: &Credentials) -> ExecSpec {
    let mut spec = ExecSpec::new(cmd).env("PGCONNECT_TIMEOUT", "10");
    if let Some(p) = &c.password {
        spec = spec.env("PGPASSWORD", p);
    }
    spec
}

/// MySQL and MariaDB images ship `mariadb-*` or `mysql*` tools (newer MariaDB images dropped
/// the mysql names): a tiny shell picks whichever exists; arguments stay positional.
fn mysql_spec(tool: &str, args: &[&str], c: &Credentials) -> ExecSpec {
    let (mariadb, mysql) = match tool {
        "dump" => ("mariadb-dump", "mysqldump"),
        _ => ("mariadb", "mysql"),
    };
    let script = format!(
        "bin=$(command -v {mariadb} || command -v {mysql}) || {{ echo 'neither {mariadb} nor \
         {mysql} is installed in the container' >&2; exit 127; }}; exec \"$bin\" \"$@\""
    );
    let mut cmd: Vec<&str> = vec!["sh", "-c", &script, "flotilla"];
    cmd.extend_from_slice(args);
    let mut spec = ExecSpec::new(&cmd);
    if let Some(p) = &c.password {
        spec = spec.env("MYSQL_PWD", p);
    }
    spec
}

/// mongodump/mongorestore read the password from a config file on fd 3 (a here-document,
/// written by the shell itself), so it never appears in a process's arguments.
fn mongo_spec(tool: &str, args: &[&str], c: &Credentials) -> ExecSpec {
    let mut cmd: Vec<String> = vec!["sh".into(), "-c".into()];
    let mut spec;
    match (&c.user, &c.password) {
        (Some(u), Some(p)) => {
            cmd.push(format!(
                "exec {tool} --config=/dev/fd/3 --authenticationDatabase=admin \
                 \"--username=$FLOTILLA_MONGO_USER\" \"$@\" 3<<EOF\npassword: \
                 '$FLOTILLA_MONGO_QUOTED'\nEOF"
            ));
            cmd.push("flotilla".into());
            spec = ExecSpec::default()
                .env("FLOTILLA_MONGO_USER", u)
                .env("FLOTILLA_MONGO_QUOTED", &p.replace('\'', "''"));
        }
        _ => {
            cmd.push(format!("exec {tool} \"$@\""));
            cmd.push("flotilla".into());
            spec = ExecSpec::default();
        }
    }
    cmd.extend(args.iter().map(|a| a.to_string()));
    spec.cmd = cmd;
    spec
}

/// `--dbname=dbname='<name>'`: libpq reads a `-d` value with `=` in it as a connection string,
/// so a database called `host=elsewhere dbname=x` could point the tools (and the password)
/// at another server; quoted as the value of `dbname` it is only ever a name.
fn pg_dbname(database: &str) -> String {
    format!(
        "--dbname=dbname='{}'",
        database.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// Lists the databases to dump; None when the engine dumps the whole server at once.
pub fn list_databases(engine: BackupEngine, c: &Credentials) -> Option<ExecSpec> {
    match engine {
        BackupEngine::Postgres => Some(pg_spec(
            &[
                "psql",
                "-U",
                &user(c, "postgres"),
                "-d",
                "postgres",
                "--no-password",
                "-At",
                "-c",
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate \
                 ORDER BY 1",
            ],
            c,
        )),
        BackupEngine::Mysql | BackupEngine::Mariadb => Some(mysql_spec(
            "client",
            &["-u", &user(c, "root"), "-N", "-B", "-e", "SHOW DATABASES"],
            c,
        )),
        BackupEngine::Mongo | BackupEngine::Redis | BackupEngine::Command => None,
    }
}

/// The database names in a listing's output (system databases left out).
pub fn parse_database_list(engine: BackupEngine, stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| match engine {
            BackupEngine::Mysql | BackupEngine::Mariadb => !MYSQL_SYSTEM_DATABASES.contains(l),
            _ => true,
        })
        .map(str::to_string)
        .collect()
}

flotilla_shared::message_error!(
    /// A dump the engine cannot make as asked (the message says what and why).
    pub UnsupportedDump
);

/// The command that writes one database's dump to stdout.
pub fn dump(
    engine: BackupEngine,
    c: &Credentials,
    database: &str,
    custom_command: &[String],
) -> Result<ExecSpec, UnsupportedDump> {
    dump_message(engine, c, database, custom_command).map_err(UnsupportedDump)
}

fn dump_message(
    engine: BackupEngine,
    c: &Credentials,
    database: &str,
    custom_command: &[String],
) -> Result<ExecSpec, String> {
    Ok(match engine {
        BackupEngine::Postgres if database == PG_GLOBALS => pg_spec(
            &[
                "pg_dumpall",
                "-U",
                &user(c, "postgres"),
                "--no-password",
                "--globals-only",
            ],
            c,
        ),
        // Custom format (pg_restore can list it and restore single objects); no compression
        // of its own, the agent compresses with zstd.
        BackupEngine::Postgres => pg_spec(
            &[
                "pg_dump",
                "-U",
                &user(c, "postgres"),
                "--no-password",
                "--format=custom",
                "--compress=0",
                &pg_dbname(database),
            ],
            c,
        ),
        BackupEngine::Mysql | BackupEngine::Mariadb => {
            let u = user(c, "root");
            let mut args = vec![
                "-u",
                &u,
                "--single-transaction",
                "--quick",
                "--hex-blob",
                "--triggers",
                "--default-character-set=utf8mb4",
                // Tablespace information needs the PROCESS privilege (MySQL 8) and is not
                // part of a database's data.
                "--no-tablespaces",
            ];
            // Routines and events need privileges an application user rarely has.
            if u == "root" {
                args.extend(["--routines", "--events"]);
            }
            args.push(database);
            mysql_spec("dump", &args, c)
        }
        BackupEngine::Mongo => {
            let db_arg = format!("--db={database}");
            let mut args = vec!["--archive", "--quiet"];
            if database != WHOLE_SERVER {
                args.push(&db_arg);
            }
            mongo_spec("mongodump", &args, c)
        }
        BackupEngine::Redis => {
            let mut spec = ExecSpec::new(&["redis-cli", "--no-auth-warning", "--rdb", "-"]);
            if let Some(p) = &c.password {
                spec = spec.env("REDISCLI_AUTH", p);
            }
            spec
        }
        BackupEngine::Command => {
            if custom_command.is_empty() {
                return Err("engine command needs `command` in the job".into());
            }
            ExecSpec::new(custom_command)
        }
    })
}

/// The commands whose `--version` output goes into the manifest.
pub fn tool_versions(engine: BackupEngine) -> Vec<(&'static str, ExecSpec)> {
    match engine {
        BackupEngine::Postgres => vec![
            ("pg_dump", ExecSpec::new(&["pg_dump", "--version"])),
            ("server", ExecSpec::new(&["postgres", "--version"])),
        ],
        BackupEngine::Mysql | BackupEngine::Mariadb => vec![(
            "dump",
            mysql_spec("dump", &["--version"], &Credentials::default()),
        )],
        BackupEngine::Mongo => vec![("mongodump", ExecSpec::new(&["mongodump", "--version"]))],
        BackupEngine::Redis => vec![("redis-cli", ExecSpec::new(&["redis-cli", "--version"]))],
        BackupEngine::Command => Vec::new(),
    }
}

flotilla_shared::message_error!(
    /// A dump whose output fails the engine's completeness check.
    pub IncompleteDump
);

/// Checks that a dump is complete from its first and last bytes: every engine's format has a
/// recognisable start or end, and a dump cut short lacks it.
pub fn check_dump(
    engine: BackupEngine,
    database: &str,
    bytes: u64,
    head: &[u8],
    tail: &[u8],
) -> Result<(), IncompleteDump> {
    check_dump_message(engine, database, bytes, head, tail).map_err(IncompleteDump)
}

fn check_dump_message(
    engine: BackupEngine,
    database: &str,
    bytes: u64,
    head: &[u8],
    tail: &[u8],
) -> Result<(), String> {
    if bytes == 0 {
        return Err("the dump is empty".into());
    }
    let tail_text = String::from_utf8_lossy(tail);
    match engine {
        BackupEngine::Postgres if database == PG_GLOBALS => {
            if !tail_text.contains("PostgreSQL database cluster dump complete") {
                return Err("pg_dumpall output lacks its end marker \
                            (\"PostgreSQL database cluster dump complete\")"
                    .into());
            }
        }
        BackupEngine::Postgres => {
            if !head.starts_with(b"PGDMP") {
                return Err(
                    "pg_dump output is not a custom-format archive (no PGDMP header)".into(),
                );
            }
        }
        BackupEngine::Mysql | BackupEngine::Mariadb => {
            if !tail_text.contains("-- Dump completed") {
                return Err("dump lacks mysqldump's end marker (\"-- Dump completed\")".into());
            }
        }
        BackupEngine::Redis => {
            // RDB: "REDIS" + version ... EOF opcode 0xFF + 8-byte checksum.
            if !head.starts_with(b"REDIS") {
                return Err("snapshot is not an RDB file (no REDIS header)".into());
            }
            if tail.len() < 9 || tail[tail.len() - 9] != 0xFF {
                return Err("RDB snapshot lacks its end-of-file marker".into());
            }
        }
        BackupEngine::Mongo => {
            if !head.starts_with(&[0x6d, 0xe2, 0x99, 0x81]) {
                return Err("mongodump output is not an archive (bad magic number)".into());
            }
        }
        BackupEngine::Command => {}
    }
    Ok(())
}

/// How many tables the target database holds (a non-empty one is only overwritten with
/// `force`); the output is one number, or nothing when the database does not exist.
pub fn count_tables(engine: BackupEngine, c: &Credentials, database: &str) -> Option<ExecSpec> {
    match engine {
        BackupEngine::Postgres if database != PG_GLOBALS => Some(pg_spec(
            &[
                "psql",
                "-U",
                &user(c, "postgres"),
                "-d",
                "postgres",
                "--no-password",
                "-At",
                "-c",
                // psql does not interpolate variables in -c; the name is quoted as a literal.
                &format!(
                    "SELECT 1 FROM pg_database WHERE datname = '{}'",
                    database.replace('\'', "''")
                ),
            ],
            c,
        )),
        BackupEngine::Mysql | BackupEngine::Mariadb => Some(mysql_spec(
            "client",
            &[
                "-u",
                &user(c, "root"),
                "-N",
                "-B",
                "-e",
                &format!(
                    "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{}'",
                    database.replace('\\', "\\\\").replace('\'', "''")
                ),
            ],
            c,
        )),
        _ => None,
    }
}

/// PostgreSQL: the number of user tables in an existing database.
pub fn pg_count_tables_in(c: &Credentials, database: &str) -> ExecSpec {
    pg_spec(
        &[
            "psql",
            "-U",
            &user(c, "postgres"),
            &pg_dbname(database),
            "--no-password",
            "-At",
            "-c",
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
        ],
        c,
    )
}

/// Creates the target database when it is missing.
pub fn create_database(engine: BackupEngine, c: &Credentials, database: &str) -> Option<ExecSpec> {
    match engine {
        BackupEngine::Postgres if database != PG_GLOBALS => Some(pg_spec(
            &[
                "createdb",
                "-U",
                &user(c, "postgres"),
                "--no-password",
                // The name is an argument, not an option, whatever it starts with.
                "--",
                database,
            ],
            c,
        )),
        BackupEngine::Mysql | BackupEngine::Mariadb => Some(mysql_spec(
            "client",
            &[
                "-u",
                &user(c, "root"),
                "-e",
                &format!(
                    "CREATE DATABASE IF NOT EXISTS `{}`",
                    database.replace('`', "``")
                ),
            ],
            c,
        )),
        _ => None,
    }
}

flotilla_shared::message_error!(
    /// A restore the engine cannot make as asked.
    pub UnsupportedRestore
);

/// The command a restore pipes the (decompressed) dump into.
pub fn restore(
    engine: BackupEngine,
    c: &Credentials,
    database: &str,
    force: bool,
    custom_command: &[String],
) -> Result<ExecSpec, UnsupportedRestore> {
    restore_message(engine, c, database, force, custom_command).map_err(UnsupportedRestore)
}

fn restore_message(
    engine: BackupEngine,
    c: &Credentials,
    database: &str,
    force: bool,
    custom_command: &[String],
) -> Result<ExecSpec, String> {
    Ok(match engine {
        BackupEngine::Postgres if database == PG_GLOBALS => pg_spec(
            &[
                "psql",
                "-U",
                &user(c, "postgres"),
                "-d",
                "postgres",
                "--no-password",
                "-q",
            ],
            c,
        ),
        BackupEngine::Postgres => {
            let u = user(c, "postgres");
            let dbname = pg_dbname(database);
            let mut args = vec![
                "pg_restore",
                "-U",
                &u,
                "--no-password",
                "--exit-on-error",
                &dbname,
            ];
            if force {
                args.extend(["--clean", "--if-exists"]);
            }
            pg_spec(&args, c)
        }
        BackupEngine::Mysql | BackupEngine::Mariadb => {
            mysql_spec("client", &["-u", &user(c, "root"), database], c)
        }
        BackupEngine::Mongo => {
            let mut args = vec!["--archive"];
            if force {
                args.push("--drop");
            }
            mongo_spec("mongorestore", &args, c)
        }
        BackupEngine::Redis => {
            return Err(
                "a Redis snapshot cannot be streamed into a running server: stop the \
                        container, copy the decompressed RDB file to its data directory as \
                        dump.rdb, and start it again"
                    .into(),
            )
        }
        BackupEngine::Command => {
            if custom_command.is_empty() {
                return Err("this job has no `restore_command`".into());
            }
            ExecSpec::new(custom_command)
        }
    })
}

/// The engine's own listing of a dump read from stdin (`pg_restore --list`); None where the
/// end marker is the only check the format allows.
pub fn listing(engine: BackupEngine, database: &str) -> Option<ExecSpec> {
    match engine {
        BackupEngine::Postgres if database != PG_GLOBALS => {
            Some(ExecSpec::new(&["pg_restore", "--list"]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check_detect(image: &str, expected: Option<BackupEngine>) {
        assert_eq!(detect_engine(image, &labels(&[])), expected, "{image}");
    }

    #[test]
    fn engines_are_recognised_by_image_name() {
        use BackupEngine::*;
        check_detect("postgres:15", Some(Postgres));
        check_detect("docker.io/library/postgres:16-alpine", Some(Postgres));
        check_detect("127.0.0.1:5000/postgres", Some(Postgres));
        check_detect("bitnami/postgresql:15@sha256:abc", Some(Postgres));
        check_detect("postgis/postgis:15-3.4", Some(Postgres));
        check_detect("mysql:8", Some(Mysql));
        check_detect("mariadb:10.11", Some(Mariadb));
        check_detect("mongo:7", Some(Mongo));
        check_detect("bitnami/mongodb", Some(Mongo));
        check_detect("redis:7-alpine", Some(Redis));
        check_detect("ghost:5", None);
        check_detect("registry:5000/postgres-exporter:1", None);
        let l = labels(&[(ENGINE_LABEL, "postgres")]);
        assert_eq!(detect_engine("myapp-db:1", &l), Some(Postgres));
        let l = labels(&[(ENGINE_LABEL, "oracle")]);
        assert_eq!(detect_engine("postgres:15", &l), None);
        assert!(label_error(&l).unwrap().contains("oracle"));
        assert!(opted_out(&labels(&[(OPT_OUT_LABEL, "false")])));
        assert!(!opted_out(&labels(&[(OPT_OUT_LABEL, "true")])));
    }

    #[test]
    fn credentials_come_from_the_official_images_variables() {
        let env = labels(&[("POSTGRES_USER", "app"), ("POSTGRES_PASSWORD", "s3cret")]);
        let c = credentials(BackupEngine::Postgres, &env, None, None);
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let env = labels(&[("MARIADB_ROOT_PASSWORD", "r"), ("MARIADB_USER", "u")]);
        let c = credentials(BackupEngine::Mariadb, &env, None, None);
        assert_eq!(
            (c.user.as_deref(), c.password.as_deref()),
            (Some("root"), Some("r"))
        );
        let env = labels(&[("MYSQL_USER", "u"), ("MYSQL_PASSWORD", "p")]);
        let c = credentials(BackupEngine::Mysql, &env, None, None);
        assert_eq!(
            (c.user.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p"))
        );
        let c = credentials(BackupEngine::Mysql, &env, Some("backup"), Some("x"));
        assert_eq!(
            (c.user.as_deref(), c.password.as_deref()),
            (Some("backup"), Some("x"))
        );
    }

    #[test]
    fn passwords_never_reach_a_command_line() {
        let c = Credentials {
            user: Some("app".into()),
            password: Some("s3cret".into()),
        };
        for engine in BackupEngine::ALL {
            let specs = [
                dump(engine, &c, "db", &["dump".into()]).ok(),
                restore(engine, &c, "db", true, &["load".into()]).ok(),
                list_databases(engine, &c),
                count_tables(engine, &c, "db"),
                create_database(engine, &c, "db"),
            ];
            for spec in specs.into_iter().flatten() {
                assert!(
                    spec.cmd.iter().all(|a| !a.contains("s3cret")),
                    "{engine}: {:?}",
                    spec.cmd
                );
            }
        }
        let spec = dump(BackupEngine::Postgres, &c, "db", &[]).unwrap();
        assert!(spec.env.contains(&"PGPASSWORD=s3cret".to_string()));
    }

    #[test]
    fn database_names_stay_names() {
        assert_eq!(pg_dbname("app"), "--dbname=dbname='app'");
        assert_eq!(
            pg_dbname("host=evil dbname=x"),
            "--dbname=dbname='host=evil dbname=x'"
        );
        assert_eq!(pg_dbname(r"a'b\c"), r"--dbname=dbname='a\'b\\c'");
        let c = Credentials::default();
        let spec = count_tables(BackupEngine::Mysql, &c, r"x\'; DROP DATABASE prod; --").unwrap();
        let sql = spec.cmd.iter().find(|a| a.starts_with("SELECT")).unwrap();
        assert!(sql.ends_with(r"= 'x\\''; DROP DATABASE prod; --'"), "{sql}");
    }

    #[test]
    fn database_lists_leave_out_system_databases() {
        let out = "app\ninformation_schema\nmysql\nperformance_schema\nsys\nshop\n";
        assert_eq!(
            parse_database_list(BackupEngine::Mariadb, out),
            vec!["app", "shop"]
        );
        assert_eq!(
            parse_database_list(BackupEngine::Postgres, "app\npostgres\n"),
            vec!["app", "postgres"]
        );
    }

    #[test]
    fn incomplete_dumps_are_recognised() {
        use BackupEngine::*;
        assert!(check_dump(Postgres, "app", 10, b"PGDMP\x01", b"").is_ok());
        assert!(check_dump(Postgres, "app", 10, b"-- SQL", b"").is_err());
        assert!(check_dump(Postgres, "app", 0, b"", b"").is_err());
        let globals = b"--\n-- PostgreSQL database cluster dump complete\n--\n\n";
        assert!(check_dump(Postgres, PG_GLOBALS, 10, b"--", globals).is_ok());
        assert!(check_dump(Postgres, PG_GLOBALS, 10, b"--", b"CREATE ROLE").is_err());
        assert!(check_dump(
            Mariadb,
            "app",
            10,
            b"--",
            b"-- Dump completed on 2026-03-01\n"
        )
        .is_ok());
        assert!(check_dump(Mysql, "app", 10, b"--", b"INSERT INTO t VALUES (1,").is_err());
        let mut rdb = b"REDIS0011".to_vec();
        rdb.extend_from_slice(&[0xFF, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(check_dump(Redis, WHOLE_SERVER, 18, &rdb, &rdb).is_ok());
        assert!(check_dump(Redis, WHOLE_SERVER, 9, b"REDIS0011", b"REDIS0011").is_err());
        assert!(check_dump(Mongo, WHOLE_SERVER, 4, &[0x6d, 0xe2, 0x99, 0x81], b"").is_ok());
        assert!(check_dump(Command, "x", 1, b"a", b"a").is_ok());
    }
}
