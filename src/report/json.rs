//! The `--json` document: its field names are fixed here, apart from the internal types
//! they are filled from.

use std::io::{self, Write};

use super::{Mode, Privilege, Report, Resources};

use crate::json::Json;

/// The `--json` document (schema in the README).
pub fn write_json(r: &Report, w: &mut impl Write) -> io::Result<()> {
    let mut j = Json::new(true);
    j.begin_obj();
    j.key("version").str(env!("CARGO_PKG_VERSION"));
    j.key("mode").str(r.mode.name());
    j.key("all").bool(r.all);
    j.key("prefix").str(&r.prefix);
    j.key("older_than_seconds");
    match r.older_than_secs {
        Some(s) => j.num(s),
        None => j.null(),
    };
    j.key("privileged").bool(r.privilege == Privilege::Full);
    let missing: Vec<String> = match &r.privilege {
        Privilege::Missing(caps) => caps.iter().map(|c| format!("CAP_{c}")).collect(),
        _ => Vec::new(),
    };
    j.key("missing_capabilities")
        .str_arr(missing.iter().map(String::as_str));
    j.key("state_dbs").begin_arr();
    for (path, family, err) in &r.dbs {
        j.begin_obj();
        j.key("path").str(path);
        j.key("family").str(family);
        j.key("read").bool(err.is_none());
        j.key("error").opt_str(err.as_deref());
        j.end_obj();
    }
    j.end_arr();
    j.key("stale").str_arr(r.stale.iter().map(String::as_str));
    j.key("targets").begin_arr();
    for (i, t) in r.targets.iter().enumerate() {
        let outcome = r.outcomes.get(i);
        j.begin_obj();
        j.key("id").str(&t.id);
        j.key("stale").bool(t.stale.is_some());
        j.key("stale_reason").opt_str(t.stale.as_deref());
        j.key("has_row").bool(t.has_row);
        write_resources(&mut j, &t.resources);
        let (state, error) = match (r.mode, outcome) {
            (Mode::DryRun, _) => ("would_delete", None),
            (Mode::Check, _) => ("leaked", None),
            (Mode::Clean, Some(o)) => match o.error() {
                None => ("deleted", None),
                Some(e) => ("failed", Some(e.to_string())),
            },
            (Mode::Clean, None) => ("not_run", None),
        };
        j.key("outcome").str(state);
        j.key("error").opt_str(error.as_deref());
        j.key("steps").begin_arr();
        for s in outcome.map(|o| o.steps.as_slice()).unwrap_or_default() {
            j.begin_obj();
            j.key("step").str(s.kind.name());
            j.key("state").str(s.state.name());
            j.key("error")
                .opt_str(s.error.as_ref().map(ToString::to_string).as_deref());
            j.end_obj();
        }
        j.end_arr();
        j.end_obj();
    }
    j.end_arr();
    j.key("incomplete")
        .str_arr(r.incomplete.iter().map(String::as_str));
    j.key("unattributed_files")
        .str_arr(r.unattributed.iter().map(String::as_str));
    j.key("other_hosts")
        .str_arr(r.other_hosts.iter().map(String::as_str));
    j.key("warnings").str_arr(r.warnings.iter().map(String::as_str));
    j.key("phases").begin_arr();
    for (name, secs) in &r.phases.laps {
        j.begin_obj();
        j.key("phase").str(name);
        j.key("seconds").num(*secs);
        j.end_obj();
    }
    j.end_arr();
    let failed = r.failures();
    j.key("summary").begin_obj();
    j.key("stale").num(r.stale.len());
    j.key("targets").num(r.targets.len());
    j.key("deleted").num(if r.mode == Mode::Clean {
        r.outcomes.len() - failed
    } else {
        0
    });
    j.key("failed").num(failed);
    j.key("other_hosts").num(r.other_hosts.len());
    j.end_obj();
    j.key("exit_code").num(r.exit_code());
    j.end_obj();
    w.write_all(j.finish().as_bytes())?;
    w.flush()
}

fn write_resources(j: &mut Json, r: &Resources) {
    j.key("resources").begin_obj();
    j.key("vmm_pids").begin_arr();
    for p in &r.vmm_pids {
        j.num(*p);
    }
    j.end_arr();
    j.key("taps").str_arr(r.taps.iter().map(String::as_str));
    j.key("nft_rules").num(r.nft_rules);
    j.key("nft_elements").num(r.nft_elements);
    j.key("nft_tables")
        .str_arr(r.nft_tables.iter().map(String::as_str));
    j.key("files").str_arr(r.files.iter().map(String::as_str));
    j.key("rows").num(r.rows);
    j.end_obj();
}
