//! etcd 3.4 server flags that raftkv has no setting for, taken so that etcd's command lines,
//! environment variables (`ETCD_*`) and config files start raftkv unchanged where they can.
//!
//! Each flag is one of two kinds:
//! * a flag whose value raftkv can honour only one way (`--enable-v2=false`,
//!   `--strict-reconfig-check=true`, an empty `--wal-dir`...): that value (etcd's default
//!   where it is raftkv's behaviour) is accepted, any other refused at startup with the reason,
//!   never ignored;
//! * a tuning knob of etcd's storage or of features raftkv does not have (`--max-wals`,
//!   `--backend-batch-limit`, the v2 proxy's timeouts...): any well-formed value is accepted,
//!   and the startup log names the flags that had no effect.

use std::time::Duration;

use serde::Deserialize;

/// How a flag's value is checked.
#[derive(Clone, Copy, Debug)]
enum Rule {
    /// Only these values (booleans in their canonical form); otherwise refused with the reason.
    Only(&'static [&'static str], &'static str),
    /// Any value of this kind is accepted; it has no effect.
    NoEffect(Kind),
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Bool,
    Count,
    Duration,
    OneOf(&'static [&'static str]),
}

const RULES: &[(&str, Rule)] = &[
    (
        "logger",
        Rule::Only(&["zap", "capnslog"], "raftkv logs with its own logger (--log-format, --log-level)"),
    ),
    ("log-outputs", Rule::Only(&["default", "stderr"], "raftkv logs to stderr")),
    ("log-package-levels", Rule::Only(&[""], "per-package log levels are not supported: use --log-level")),
    ("debug", Rule::Only(&["false", "true"], "")),
    ("enable-v2", Rule::Only(&["false"], "raftkv serves only the v3 API")),
    ("experimental-enable-v2v3", Rule::Only(&[""], "raftkv serves only the v3 API")),
    ("enable-pprof", Rule::Only(&["false"], "raftkv has no pprof endpoints")),
    ("metrics", Rule::Only(&["basic"], "raftkv serves etcd's basic metrics only")),
    ("strict-reconfig-check", Rule::Only(&["true"], "raftkv's strict reconfiguration check is always on")),
    ("pre-vote", Rule::NoEffect(Kind::Bool)),
    ("initial-election-tick-advance", Rule::NoEffect(Kind::Bool)),
    ("experimental-enable-lease-checkpoint", Rule::NoEffect(Kind::Bool)),
    (
        "experimental-initial-corrupt-check",
        Rule::Only(
            &["false"],
            "raftkv has no corruption check; compare members with `etcdctl endpoint hashkv --cluster`",
        ),
    ),
    (
        "experimental-corrupt-check-time",
        Rule::Only(
            &["0s"],
            "raftkv has no corruption check; compare members with `etcdctl endpoint hashkv --cluster`",
        ),
    ),
    (
        "experimental-peer-skip-client-san-verification",
        Rule::Only(
            &["true"],
            "raftkv checks a peer's certificate chain, not its SANs against the peer's address",
        ),
    ),
    ("max-snapshots", Rule::NoEffect(Kind::Count)),
    ("max-wals", Rule::NoEffect(Kind::Count)),
    ("backend-batch-interval", Rule::NoEffect(Kind::Duration)),
    ("backend-batch-limit", Rule::NoEffect(Kind::Count)),
    ("experimental-backend-bbolt-freelist-type", Rule::NoEffect(Kind::OneOf(&["array", "map"]))),
    ("experimental-compaction-batch-limit", Rule::NoEffect(Kind::Count)),
    ("experimental-warning-apply-duration", Rule::NoEffect(Kind::Duration)),
    ("max-concurrent-streams", Rule::NoEffect(Kind::Count)),
    ("wal-dir", Rule::Only(&[""], "raftkv keeps its log in --data-dir")),
    ("cors", Rule::Only(&[""], "raftkv's gateway sends no CORS headers")),
    ("host-whitelist", Rule::Only(&["*", ""], "raftkv does not check Host headers")),
    ("client-crl-file", Rule::Only(&[""], "certificate revocation lists are not supported")),
    ("peer-crl-file", Rule::Only(&[""], "certificate revocation lists are not supported")),
    (
        "client-cert-allowed-hostname",
        Rule::Only(&[""], "client certificates are checked against the CA only"),
    ),
    ("peer-cert-allowed-cn", Rule::Only(&[""], "peer certificates are checked against the CA only")),
    ("peer-cert-allowed-hostname", Rule::Only(&[""], "peer certificates are checked against the CA only")),
    ("discovery", Rule::Only(&[""], "discovery is not supported: give --initial-cluster")),
    ("discovery-srv", Rule::Only(&[""], "DNS discovery is not supported: give --initial-cluster")),
    ("discovery-srv-name", Rule::Only(&[""], "DNS discovery is not supported: give --initial-cluster")),
    ("discovery-proxy", Rule::Only(&[""], "discovery is not supported: give --initial-cluster")),
    ("discovery-fallback", Rule::NoEffect(Kind::OneOf(&["exit", "proxy"]))),
    (
        "force-new-cluster",
        Rule::Only(
            &["false"],
            "raftkv recovers a lost quorum from a survivor's snapshot instead (docs/operations.md, Recovering from a lost quorum)",
        ),
    ),
    ("proxy", Rule::Only(&["off"], "raftkv has no v2 proxy mode")),
    ("proxy-failure-wait", Rule::NoEffect(Kind::Count)),
    ("proxy-refresh-interval", Rule::NoEffect(Kind::Count)),
    ("proxy-dial-timeout", Rule::NoEffect(Kind::Count)),
    ("proxy-write-timeout", Rule::NoEffect(Kind::Count)),
    ("proxy-read-timeout", Rule::NoEffect(Kind::Count)),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EtcdFlagError {
    #[error("--{flag}={value:?} is not supported: {why} (accepted: {accepted})")]
    Unsupported { flag: &'static str, value: String, why: &'static str, accepted: String },
    #[error("--{flag}={value:?}: expected {expected}")]
    Malformed { flag: &'static str, value: String, expected: String },
    #[error("--{flag} is not an etcd 3.4 flag raftkv knows")]
    Unknown { flag: String },
}

/// What the etcd flags given come to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Flags given that have no effect in raftkv (for the startup log).
    pub no_effect: Vec<String>,
    /// `--debug=true`: debug logging unless --log-level says otherwise.
    pub debug: bool,
}

/// Checks the etcd flags given (flag name without dashes, value).
pub fn check(given: &[(&'static str, &str)]) -> Result<Checked, EtcdFlagError> {
    let mut checked = Checked::default();
    for &(flag, value) in given {
        let Some((_, rule)) = RULES.iter().find(|(f, _)| *f == flag) else {
            return Err(EtcdFlagError::Unknown { flag: flag.to_string() });
        };
        let value = value.trim();
        match *rule {
            Rule::Only(accepted, why) => {
                let canonical = if accepted.iter().any(|a| *a == "true" || *a == "false") {
                    go_bool(value).ok_or_else(|| malformed(flag, value, "true or false"))?.to_string()
                } else if accepted == ["0s"] {
                    go_duration(value).ok_or_else(|| malformed(flag, value, "a duration"))?;
                    if go_duration(value) == Some(Duration::ZERO) { "0s".into() } else { value.to_string() }
                } else {
                    value.to_string()
                };
                if !accepted.contains(&canonical.as_str()) {
                    let accepted = accepted.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" or ");
                    return Err(EtcdFlagError::Unsupported { flag, value: value.to_string(), why, accepted });
                }
                if flag == "debug" {
                    checked.debug = canonical == "true";
                }
            }
            Rule::NoEffect(kind) => {
                let ok = match kind {
                    Kind::Bool => go_bool(value).is_some(),
                    Kind::Count => value.parse::<u64>().is_ok(),
                    Kind::Duration => go_duration(value).is_some(),
                    Kind::OneOf(values) => values.contains(&value),
                };
                if !ok {
                    let expected = match kind {
                        Kind::Bool => "true or false".to_string(),
                        Kind::Count => "a non-negative integer".to_string(),
                        Kind::Duration => "a duration (e.g. 100ms)".to_string(),
                        Kind::OneOf(values) => values.join(" or "),
                    };
                    return Err(EtcdFlagError::Malformed { flag, value: value.to_string(), expected });
                }
                checked.no_effect.push(format!("--{flag}"));
            }
        }
    }
    Ok(checked)
}

fn malformed(flag: &'static str, value: &str, expected: &str) -> EtcdFlagError {
    EtcdFlagError::Malformed { flag, value: value.to_string(), expected: expected.to_string() }
}

/// Go's `strconv.ParseBool`.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration` for the units etcd's flags use (and a bare 0).
fn go_duration(v: &str) -> Option<Duration> {
    if v == "0" {
        return Some(Duration::ZERO);
    }
    let us = v.strip_suffix("us").or_else(|| v.strip_suffix("µs"));
    if let Some(n) = us.and_then(|n| n.parse::<f64>().ok()) {
        return (n.is_finite() && n >= 0.0).then(|| Duration::from_secs_f64(n / 1e6));
    }
    if let Some(n) = v.strip_suffix("ns").and_then(|n| n.parse::<u64>().ok()) {
        return Some(Duration::from_nanos(n));
    }
    crate::member::autocompact::parse_duration(v)
}

/// A config file's value for one of these flags: a string, a boolean, a number or a list of
/// them (etcd's YAML has `log-outputs: [stderr]`), as the flag's text.
pub fn scalar<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Bool(bool),
        Int(i64),
        Float(f64),
        Text(String),
        List(Vec<Scalar>),
    }
    fn text(s: Scalar) -> String {
        match s {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(t) => t,
            Scalar::List(l) => l.into_iter().map(text).collect::<Vec<_>>().join(","),
        }
    }
    Ok(Option::<Scalar>::deserialize(d)?.map(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_a_rule_and_a_field() {
        let args = crate::config::ServerArgs::default();
        assert!(args.etcd_flags().is_empty());
        for (flag, _) in RULES {
            let ok = check(&[(flag, "")]);
            // Each flag is known (an empty value is accepted or refused, never unknown).
            assert!(!matches!(ok, Err(EtcdFlagError::Unknown { .. })), "{flag}");
        }
        assert!(matches!(check(&[("no-such-flag", "x")]), Err(EtcdFlagError::Unknown { .. })));
    }

    #[test]
    fn etcds_defaults_and_raftkvs_behaviour_are_accepted() {
        let given = [
            ("logger", "zap"),
            ("log-outputs", "stderr"),
            ("enable-v2", "false"),
            ("enable-pprof", "0"),
            ("metrics", "basic"),
            ("strict-reconfig-check", "True"),
            ("pre-vote", "true"),
            ("experimental-initial-corrupt-check", "false"),
            ("experimental-corrupt-check-time", "0"),
            ("wal-dir", ""),
            ("host-whitelist", "*"),
            ("force-new-cluster", "false"),
            ("proxy", "off"),
            ("max-wals", "5"),
            ("backend-batch-interval", "100ms"),
            ("experimental-backend-bbolt-freelist-type", "map"),
            ("experimental-warning-apply-duration", "100ms"),
            ("debug", "true"),
        ];
        let checked = check(&given).expect("accepted");
        assert!(checked.debug);
        assert_eq!(
            checked.no_effect,
            vec![
                "--pre-vote",
                "--max-wals",
                "--backend-batch-interval",
                "--experimental-backend-bbolt-freelist-type",
                "--experimental-warning-apply-duration"
            ]
        );
    }

    #[test]
    fn command_lines_give_them_as_etcds_does() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: crate::config::ServerArgs,
        }
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "raftkv",
            "--enable-v2",
            "--name",
            "x",
            "--max-wals",
            "5",
            "--wal-dir=",
            "--pre-vote=false",
            "--unsafe-no-fsync=false",
        ])
        .expect("parses");
        assert_eq!(cli.args.name.as_deref(), Some("x"), "a bare boolean flag takes no value");
        assert!(!cli.args.unsafe_no_fsync);
        assert_eq!(
            cli.args.etcd_flags(),
            vec![("enable-v2", "true"), ("pre-vote", "false"), ("max-wals", "5"), ("wal-dir", "")]
        );
        assert!(Cli::try_parse_from(["raftkv", "--unsafe-no-fsync"]).expect("parses").args.unsafe_no_fsync);
    }

    #[test]
    fn config_files_give_them_as_etcds_yaml_does() {
        let yaml = "name: k\nlogger: zap\nlog-outputs: [stderr]\nenable-v2: false\nmax-wals: 5\nbackend-batch-interval: 10ms\n";
        let args: crate::config::ServerArgs = serde_yaml::from_str(yaml).expect("parses");
        assert_eq!(
            args.etcd_flags(),
            vec![
                ("logger", "zap"),
                ("log-outputs", "stderr"),
                ("enable-v2", "false"),
                ("max-wals", "5"),
                ("backend-batch-interval", "10ms")
            ]
        );
        assert!(check(&args.etcd_flags()).is_ok());
        let refused: crate::config::ServerArgs = serde_yaml::from_str("enable-v2: true\n").expect("parses");
        assert!(matches!(check(&refused.etcd_flags()), Err(EtcdFlagError::Unsupported { .. })));
    }

    #[test]
    fn behaviour_raftkv_cannot_give_is_refused_with_the_reason() {
        let refused = |flag: &'static str, value: &str| match check(&[(flag, value)]) {
            Err(e @ EtcdFlagError::Unsupported { .. }) => e.to_string(),
            other => panic!("--{flag}={value}: {other:?}"),
        };
        assert_eq!(
            refused("enable-v2", "true"),
            "--enable-v2=\"true\" is not supported: raftkv serves only the v3 API (accepted: \"false\")"
        );
        assert!(refused("force-new-cluster", "true").contains("Recovering from a lost quorum"));
        assert!(refused("wal-dir", "/var/lib/etcd/wal").contains("--data-dir"));
        assert!(refused("client-crl-file", "/etc/crl.pem").contains("revocation"));
        assert!(refused("strict-reconfig-check", "false").contains("always on"));
        assert!(refused("experimental-initial-corrupt-check", "true").contains("hashkv"));
        assert!(refused("experimental-corrupt-check-time", "5m").contains("hashkv"));
        assert!(refused("metrics", "extensive").contains("basic"));
        assert!(refused("proxy", "on").contains("proxy"));
        assert!(refused("discovery-srv", "example.com").contains("--initial-cluster"));
        // Malformed values say what was expected.
        assert!(matches!(check(&[("max-wals", "-1")]), Err(EtcdFlagError::Malformed { .. })));
        assert!(matches!(check(&[("enable-v2", "maybe")]), Err(EtcdFlagError::Malformed { .. })));
        assert!(matches!(check(&[("backend-batch-interval", "soon")]), Err(EtcdFlagError::Malformed { .. })));
        assert!(matches!(check(&[("discovery-fallback", "retry")]), Err(EtcdFlagError::Malformed { .. })));
    }
}
