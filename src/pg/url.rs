//! libpq's URL syntax (`postgresql://user:pw@host:port,host2/db?k=v`), read into what it
//! says, and any connection string shown with its secrets hidden.

/// What a connection string may say: its keywords, URL or environment, as given.
#[derive(Debug, Default)]
pub(super) struct Given {
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) hosts: Option<String>,
    pub(super) ports: Option<String>,
    pub(super) dbname: Option<String>,
    pub(super) kv: Vec<(String, String)>,
}

/// Why a connection string cannot be used (never quoting a password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadUrl(pub String);

impl std::fmt::Display for BadUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(super) fn bad<T>(why: impl Into<String>) -> Result<T, BadUrl> {
    Err(BadUrl(why.into()))
}

/// libpq's URI syntax (`conninfo_uri_parse_options`): user-info up to the first `@`
/// before any `/`, hosts and ports separated by commas (IPv6 in brackets), the database,
/// then `key=value` pairs; every part percent-decoded.
pub(super) fn parse_uri(url: &str) -> Result<Given, BadUrl> {
    let rest = ["postgresql://", "postgres://"]
        .iter()
        .find_map(|p| url.strip_prefix(p))
        .ok_or_else(|| BadUrl("it does not start with postgresql:// or postgres://".into()))?;
    let mut g = Given::default();
    let mut rest = rest;
    let before_slash = rest.find('/').unwrap_or(rest.len());
    if let Some(at) = rest[..before_slash].find('@') {
        let info = &rest[..at];
        let (user, pw) = match info.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (info, None),
        };
        if !user.is_empty() {
            g.user = Some(decode(user, "user name")?);
        }
        if let Some(pw) = pw {
            // Never quoted: a bad escape in it is reported without it.
            g.password =
                Some(decode(pw, "password").map_err(|_| BadUrl("the password has a bad %-escape".into()))?);
        }
        rest = &rest[at + 1..];
    }
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    loop {
        let (host, after) = if let Some(v6) = rest.strip_prefix('[') {
            let Some(end) = v6.find(']') else {
                return bad("an IPv6 host has no closing ]");
            };
            (&v6[..end], &v6[end + 1..])
        } else {
            let end = rest.find([':', ',', '/', '?']).unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        hosts.push(decode(host, "host")?);
        rest = after;
        let mut port = String::new();
        if let Some(p) = rest.strip_prefix(':') {
            let end = p.find([',', '/', '?']).unwrap_or(p.len());
            port = decode(&p[..end], "port")?;
            rest = &p[end..];
        }
        ports.push(port);
        match rest.strip_prefix(',') {
            Some(r) => rest = r,
            None => break,
        }
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        g.hosts = Some(hosts.join(","));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        g.ports = Some(ports.join(","));
    }
    if let Some(r) = rest.strip_prefix('/') {
        let end = r.find('?').unwrap_or(r.len());
        if end > 0 {
            g.dbname = Some(decode(&r[..end], "database name")?);
        }
        rest = &r[end..];
    }
    if let Some(q) = rest.strip_prefix('?') {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return bad(format!("query parameter {:?} has no value", redact_key(pair)));
            };
            let k = decode(k, "parameter name")?;
            let v = decode(v, &k).map_err(|e| {
                if is_secret(&k) {
                    BadUrl(format!("{k} has a bad %-escape"))
                } else {
                    e
                }
            })?;
            // libpq's JDBC compatibility: ssl=true is sslmode=require.
            let (k, v) = if k == "ssl" && v == "true" {
                ("sslmode".to_string(), "require".to_string())
            } else {
                (k, v)
            };
            match k.as_str() {
                "user" => g.user = Some(v),
                "password" => g.password = Some(v),
                "host" => g.hosts = Some(v),
                "port" => g.ports = Some(v),
                "dbname" => g.dbname = Some(v),
                _ => g.kv.push((k, v)),
            }
        }
    } else if !rest.is_empty() {
        return bad("unexpected text after the host and database");
    }
    Ok(g)
}

pub(super) fn is_secret(k: &str) -> bool {
    k == "password" || k == "sslpassword"
}

fn redact_key(pair: &str) -> String {
    match pair.split_once('=') {
        Some((k, _)) if is_secret(k) => format!("{k}=***"),
        _ => pair.to_string(),
    }
}

/// Percent-decoding as libpq does it: `%XX` only, the result UTF-8 (a NUL is refused).
fn decode(s: &str, what: &str) -> Result<String, BadUrl> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(0) | None => return bad(format!("the {what} has a bad %-escape")),
                Some(v) => out.push(v),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BadUrl(format!("the {what} is not UTF-8 once decoded")))
}

/// A connection string as it may be shown: the password in the user-info part, and
/// `password=`/`sslpassword=` (in the query, or as keyword/value pairs) hidden.
pub fn redact(url: &str) -> String {
    if !url.contains("://") {
        // keyword/value: `host=db password=s3cret` (quoted values too).
        return redact_keywords(url);
    }
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let mut shown = base.to_string();
    if let Some(s) = base.find("://").map(|i| i + 3) {
        // The authority ends at the path: an `@` past it is no user-info. The last `@`
        // before it hides the most (a raw `@` in a password).
        let end = base[s..].find('/').map_or(base.len(), |i| s + i);
        if let Some(at) = base[s..end].rfind('@').map(|i| s + i)
            && let Some((user, _)) = base[s..at].split_once(':')
        {
            shown = format!("{}{user}:***{}", &base[..s], &base[at..]);
        }
    }
    if let Some(query) = query {
        let params: Vec<String> = query.split('&').map(redact_key).collect();
        shown.push('?');
        shown.push_str(&params.join("&"));
    }
    shown
}

fn redact_keywords(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim_end();
        let secret = is_secret(key.rsplit(char::is_whitespace).next().unwrap_or(key));
        out.push_str(&rest[..=eq]);
        let value = rest[eq + 1..].trim_start();
        out.push_str(&rest[eq + 1..rest.len() - value.len()]);
        // A value runs to the next space, or is quoted with \' and \\ escapes.
        let len = if value.starts_with('\'') {
            let mut escaped = false;
            value
                .char_indices()
                .skip(1)
                .find(|&(_, c)| {
                    let end = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    end
                })
                .map_or(value.len(), |(i, _)| i + 1)
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str(if secret { "***" } else { &value[..len] });
        rest = &value[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_secrets() {
        for (url, shown) in [
            (
                "postgresql://ci:s3cret@db:5432/smolvm",
                "postgresql://ci:***@db:5432/smolvm",
            ),
            ("postgres://db/smolvm", "postgres://db/smolvm"),
            (
                "postgresql://u@h/db?sslmode=require&password=s3cret&sslpassword=k3y",
                "postgresql://u@h/db?sslmode=require&password=***&sslpassword=***",
            ),
            (
                "postgresql:///db?host=/run/postgresql&password=s3cret&options=-c%20a@b",
                "postgresql:///db?host=/run/postgresql&password=***&options=-c%20a@b",
            ),
            (
                "postgresql://u:p%40ss@h/db?application_name=x@y",
                "postgresql://u:***@h/db?application_name=x@y",
            ),
            ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
            ("host=db password=s3cret user=x", "host=db password=*** user=x"),
            (
                "host=db password = 's3 c\\'ret' user=x",
                "host=db password = *** user=x",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }
}
