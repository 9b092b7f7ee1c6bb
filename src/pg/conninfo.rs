//! libpq's connection rules, as psycopg (and so SmolVM) applies them: the URL (`url`),
//! then the `PG*` environment, then the compiled-in defaults (the Unix socket
//! `/var/run/postgresql`, port 5432, the OS user, a database named like the user). Pure:
//! the environment comes in as a function, so every rule is unit-tested. The password
//! never appears in anything this prints.

use std::path::PathBuf;
use std::time::Duration;

use super::url::{BadUrl, Given, bad, parse_uri};

/// libpq's default socket directory as Debian and psycopg's own wheels build it.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
pub const DEFAULT_PORT: u16 = 5432;

/// A password, never shown: `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where one server is: a TCP host name or address, or a Unix socket directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Tcp(String),
    Unix(PathBuf),
}

/// One server to try: where, its port, and the address to connect to instead of
/// resolving the name (`hostaddr`; the name still checks the certificate and `.pgpass`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub addr: Addr,
    pub port: u16,
    pub hostaddr: Option<String>,
}

impl Host {
    /// The host as `.pgpass` matches it: `localhost` for the default socket directory.
    pub fn pgpass_name(&self) -> String {
        match &self.addr {
            Addr::Unix(d) if d.as_os_str() == DEFAULT_SOCKET_DIR => "localhost".into(),
            Addr::Unix(d) => d.display().to_string(),
            Addr::Tcp(h) => h.clone(),
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.addr {
            Addr::Unix(d) => write!(f, "socket {}/.s.PGSQL.{}", d.display(), self.port),
            Addr::Tcp(h) if h.contains(':') => write!(f, "[{h}]:{}", self.port),
            Addr::Tcp(h) => write!(f, "{h}:{}", self.port),
        }
    }
}

/// `sslmode`, in libpq's order of strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// `channel_binding`: SCRAM's binding of the authentication to the TLS session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    Disable,
    Prefer,
    Require,
}

/// Everything needed to reach and log in to the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub hosts: Vec<Host>,
    pub user: String,
    pub dbname: String,
    /// From the URL or `PGPASSWORD`; `.pgpass` is read per host when this is None.
    pub password: Option<Secret>,
    pub passfile: PathBuf,
    pub sslmode: SslMode,
    /// The CA file (else `~/.postgresql/root.crt` when it exists: then `require`
    /// verifies the chain as `verify-ca` does, libpq's backward-compatible rule).
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub sslsni: bool,
    pub channel_binding: ChannelBinding,
    pub connect_timeout: Option<Duration>,
    pub application_name: Option<String>,
    pub options: Option<String>,
    /// The home `~/.postgresql/` is under (client certificate and root CA defaults).
    pub home: Option<PathBuf>,
}

/// The environment libpq reads: its variables, the user name and home it falls back on.
pub struct Env<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub os_user: Option<String>,
    pub home: Option<PathBuf>,
}

/// libpq keywords that ask for something this client does not do: refused by name, never
/// silently weakened (a CRL ignored, a required GSSAPI encryption skipped).
const REFUSED: [(&str, &str); 8] = [
    ("sslcrl", "certificate revocation lists are not checked"),
    ("sslcrldir", "certificate revocation lists are not checked"),
    ("sslpassword", "encrypted client keys are not read"),
    ("requirepeer", "the server's peer user is not checked"),
    (
        "require_auth",
        "the allowed authentication methods cannot be restricted",
    ),
    ("service", "service files (pg_service.conf) are not read"),
    ("replication", "replication connections are not made"),
    (
        "sslcertmode",
        "client certificate modes other than the default are not supported",
    ),
];

/// libpq keywords accepted and honoured, or accepted as harmless to ignore.
const KNOWN: [&str; 28] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "target_session_attrs",
];

/// Also accepted: GSSAPI settings that only matter to a client that does GSSAPI (ours
/// never asks for encryption unless `gssencmode=require`, which is refused).
const IGNORED: [&str; 5] = [
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "load_balance_hosts",
];

/// Parses a `postgresql://` or `postgres://` URL with the environment's fallbacks.
pub fn parse(url: &str, env: &Env<'_>) -> Result<Params, BadUrl> {
    let given = parse_uri(url)?;
    resolve(given, env)
}

/// The URL's settings, then the `PG*` variables, then the defaults.
fn resolve(g: Given, env: &Env<'_>) -> Result<Params, BadUrl> {
    let mut kv: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for (k, v) in g.kv {
        if let Some((_, why)) = REFUSED.iter().find(|(r, _)| *r == k) {
            return bad(format!("{k} is not supported ({why})"));
        }
        if !KNOWN.contains(&k.as_str()) && !IGNORED.contains(&k.as_str()) {
            return bad(format!("invalid URI query parameter: {k:?}"));
        }
        kv.insert(k, v);
    }
    let var = |k: &str| (env.var)(k).filter(|v| !v.is_empty());
    let get = |key: &str, var_name: &str| kv.get(key).cloned().or_else(|| var(var_name));
    if get("gssencmode", "PGGSSENCMODE").as_deref() == Some("require") {
        return bad("gssencmode=require is not supported (GSSAPI encryption is not done)");
    }
    if let Some(t) = get("target_session_attrs", "PGTARGETSESSIONATTRS")
        && !matches!(t.as_str(), "any" | "read-write" | "primary")
    {
        return bad(format!(
            "target_session_attrs={t} is not supported (any, read-write)"
        ));
    }
    if let Some(n) = get("sslnegotiation", "PGSSLNEGOTIATION")
        && n != "postgres"
    {
        return bad(format!("sslnegotiation={n} is not supported (postgres)"));
    }
    let user = g
        .user
        .or_else(|| var("PGUSER"))
        .or_else(|| env.os_user.clone())
        .ok_or_else(|| {
            BadUrl("no user name: the URL names none, PGUSER is unset and the OS user is unknown".into())
        })?;
    let dbname = g
        .dbname
        .or_else(|| var("PGDATABASE"))
        .unwrap_or_else(|| user.clone());
    let hosts = hosts(
        g.hosts.or_else(|| var("PGHOST")),
        g.ports.or_else(|| var("PGPORT")),
        get("hostaddr", "PGHOSTADDR"),
    )?;
    let sslmode = match get("sslmode", "PGSSLMODE") {
        Some(m) => SslMode::parse(&m).ok_or_else(|| BadUrl(format!("invalid sslmode value: {m:?}")))?,
        None if var("PGREQUIRESSL").as_deref() == Some("1") => SslMode::Require,
        None => SslMode::Prefer,
    };
    let channel_binding = match get("channel_binding", "PGCHANNELBINDING").as_deref() {
        None | Some("prefer") => ChannelBinding::Prefer,
        Some("disable") => ChannelBinding::Disable,
        Some("require") => ChannelBinding::Require,
        Some(other) => return bad(format!("invalid channel_binding value: {other:?}")),
    };
    let connect_timeout = match get("connect_timeout", "PGCONNECT_TIMEOUT") {
        None => None,
        Some(t) => match t.trim().parse::<i64>() {
            // libpq: zero or negative waits forever; one second is raised to two.
            Ok(s) if s <= 0 => None,
            Ok(s) => Some(Duration::from_secs(s.max(2).unsigned_abs())),
            Err(_) => return bad(format!("invalid connect_timeout value: {t:?}")),
        },
    };
    let sslsni = get("sslsni", "PGSSLSNI").is_none_or(|v| v != "0");
    let home = env.home.clone();
    let passfile = get("passfile", "PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".pgpass")))
        .unwrap_or_default();
    if get("sslrootcert", "PGSSLROOTCERT").as_deref() == Some("system") {
        return bad("sslrootcert=system is not supported (no system CA store is built in): name a CA file");
    }
    Ok(Params {
        hosts,
        dbname,
        password: g.password.or_else(|| var("PGPASSWORD")).map(Secret),
        passfile,
        sslmode,
        sslrootcert: get("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from),
        sslcert: get("sslcert", "PGSSLCERT").map(PathBuf::from),
        sslkey: get("sslkey", "PGSSLKEY").map(PathBuf::from),
        sslsni,
        channel_binding,
        connect_timeout,
        application_name: get("application_name", "PGAPPNAME")
            .or_else(|| kv.get("fallback_application_name").cloned()),
        options: get("options", "PGOPTIONS"),
        home,
        user,
    })
}

/// libpq's host list: as many ports as hosts (or one for all), an empty entry meaning
/// the default; a host starting with `/` is a Unix socket directory.
fn hosts(
    hosts: Option<String>,
    ports: Option<String>,
    hostaddr: Option<String>,
) -> Result<Vec<Host>, BadUrl> {
    let names: Vec<String> = hosts
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::to_string)
        .collect();
    let ports: Vec<&str> = ports.as_deref().map_or(vec![""], |p| p.split(',').collect());
    let addrs: Vec<&str> = hostaddr.as_deref().map_or(vec![], |a| a.split(',').collect());
    if ports.len() != 1 && ports.len() != names.len() {
        return bad(format!(
            "could not match {} port numbers to {} hosts",
            ports.len(),
            names.len()
        ));
    }
    if !addrs.is_empty() && addrs.len() != names.len() {
        return bad(format!(
            "could not match {} host addresses to {} hosts",
            addrs.len(),
            names.len()
        ));
    }
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let p = ports.get(i).or(ports.first()).copied().unwrap_or("").trim();
        let port = if p.is_empty() {
            DEFAULT_PORT
        } else {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return bad(format!("invalid port number: {p:?}")),
            }
        };
        let hostaddr = addrs.get(i).map(|a| a.to_string()).filter(|a| !a.is_empty());
        let addr = if name.starts_with('/') {
            Addr::Unix(PathBuf::from(name))
        } else if name.starts_with('@') {
            return bad("abstract Unix sockets (@name) are not supported");
        } else if name.is_empty() {
            match &hostaddr {
                Some(a) => Addr::Tcp(a.clone()),
                None => Addr::Unix(PathBuf::from(DEFAULT_SOCKET_DIR)),
            }
        } else {
            Addr::Tcp(name.clone())
        };
        out.push(Host { addr, port, hostaddr });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn parse_with(url: &str, vars: &'static [(&'static str, &'static str)]) -> Result<Params, BadUrl> {
        let var = env_of(vars);
        parse(
            url,
            &Env {
                var: &var,
                os_user: Some("root".into()),
                home: Some("/root".into()),
            },
        )
    }

    #[test]
    fn a_tcp_url_with_a_percent_encoded_password() {
        let p = parse_with(
            "postgresql://ci:p%40ss%3Aw@db.example:6432/smolvm?sslmode=require",
            &[],
        )
        .unwrap();
        assert_eq!(p.user, "ci");
        assert_eq!(p.password, Some(Secret("p@ss:w".into())));
        assert_eq!(
            p.hosts,
            [Host {
                addr: Addr::Tcp("db.example".into()),
                port: 6432,
                hostaddr: None
            }]
        );
        assert_eq!((p.dbname.as_str(), p.sslmode), ("smolvm", SslMode::Require));
        assert_eq!(p.passfile, PathBuf::from("/root/.pgpass"));
        assert_eq!(format!("{:?}", p.password), "Some(***)");
    }

    #[test]
    fn defaults_come_from_the_environment_then_libpq() {
        let p = parse_with("postgresql:///smolvm", &[]).unwrap();
        assert_eq!(p.hosts[0].addr, Addr::Unix(DEFAULT_SOCKET_DIR.into()));
        assert_eq!(
            (p.hosts[0].port, p.user.as_str(), p.password.is_none()),
            (5432, "root", true)
        );
        assert_eq!(p.sslmode, SslMode::Prefer);
        let p = parse_with(
            "postgres://",
            &[
                ("PGHOST", "/run/pg"),
                ("PGPORT", "5433"),
                ("PGUSER", "svc"),
                ("PGPASSWORD", "x"),
                ("PGSSLMODE", "disable"),
                ("PGPASSFILE", "/etc/pgpass"),
            ],
        )
        .unwrap();
        assert_eq!(p.hosts[0].addr, Addr::Unix("/run/pg".into()));
        assert_eq!(
            (p.hosts[0].port, p.user.as_str(), p.dbname.as_str()),
            (5433, "svc", "svc")
        );
        assert_eq!(
            (p.password, p.sslmode),
            (Some(Secret("x".into())), SslMode::Disable)
        );
        assert_eq!(p.passfile, PathBuf::from("/etc/pgpass"));
        // The URL wins over the environment.
        let p = parse_with(
            "postgresql://u:pw@h:1/d",
            &[("PGUSER", "svc"), ("PGPASSWORD", "x")],
        )
        .unwrap();
        assert_eq!((p.user.as_str(), p.password), ("u", Some(Secret("pw".into()))));
    }

    #[test]
    fn unix_sockets_as_query_or_encoded_host() {
        let p = parse_with("postgresql:///smolvm?host=/tmp/pg&port=5999", &[]).unwrap();
        assert_eq!(
            (&p.hosts[0].addr, p.hosts[0].port),
            (&Addr::Unix("/tmp/pg".into()), 5999)
        );
        let p = parse_with("postgresql://%2Fvar%2Frun%2Fpg/smolvm", &[]).unwrap();
        assert_eq!(p.hosts[0].addr, Addr::Unix("/var/run/pg".into()));
        assert_eq!(p.hosts[0].pgpass_name(), "/var/run/pg");
        let p = parse_with("postgresql://%2Fvar%2Frun%2Fpostgresql/smolvm", &[]).unwrap();
        assert_eq!(p.hosts[0].pgpass_name(), "localhost");
    }

    #[test]
    fn several_hosts_ipv6_and_hostaddr() {
        let p = parse_with("postgresql://a:1,[::1]:2,c/db", &[]).unwrap();
        let shown: Vec<String> = p.hosts.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a:1", "[::1]:2", "c:5432"]);
        let p = parse_with("postgresql://db.internal/x?hostaddr=10.0.0.5", &[]).unwrap();
        assert_eq!(p.hosts[0].hostaddr.as_deref(), Some("10.0.0.5"));
        assert_eq!(p.hosts[0].pgpass_name(), "db.internal");
    }

    #[test]
    fn what_cannot_be_used_is_refused_without_the_password() {
        for (url, why) in [
            ("mysql://x", "it does not start with postgresql:// or postgres://"),
            ("postgresql://h:notaport/db", "invalid port number: \"notaport\""),
            (
                "postgresql://h/db?sslmode=bogus",
                "invalid sslmode value: \"bogus\"",
            ),
            (
                "postgresql://h/db?frobnicate=1",
                "invalid URI query parameter: \"frobnicate\"",
            ),
            (
                "postgresql://h/db?sslcrl=/x",
                "sslcrl is not supported (certificate revocation lists are not checked)",
            ),
            ("postgresql://u:s3cr%zzt@h/db", "the password has a bad %-escape"),
            (
                "postgresql://h/db?password=s3cr%zz",
                "password has a bad %-escape",
            ),
            (
                "postgresql://h/db?password",
                "query parameter \"password\" has no value",
            ),
        ] {
            let e = parse_with(url, &[]).unwrap_err();
            assert_eq!(e.0, why, "{url}");
            assert!(!e.0.contains("s3cr"));
        }
    }

    #[test]
    fn ssl_true_and_connect_timeout_as_libpq_reads_them() {
        let p = parse_with("postgresql://h/db?ssl=true&connect_timeout=1", &[]).unwrap();
        assert_eq!(p.sslmode, SslMode::Require);
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(2)));
        let p = parse_with("postgresql://h/db?connect_timeout=0", &[]).unwrap();
        assert_eq!(p.connect_timeout, None);
    }
}
