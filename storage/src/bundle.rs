//! OCI runtime bundles: the `config.json` a runtime (`runc run -b DIR`)
//! takes, made from an image config — pure functions, no I/O.
//!
//! From the image config's `config`: `Entrypoint` + `Cmd` (or the caller's
//! command instead of `Cmd`, as `podman run IMAGE CMD…`) are
//! `process.args`; `Env` is `process.env` (with a default `PATH` when it
//! has none); `WorkingDir` is `process.cwd` (`/` when unset); `User`
//! (`uid`, `name`, `uid:gid`, `name:group`) is resolved against the
//! container's own `/etc/passwd` and `/etc/group`; `StopSignal` goes into
//! the annotation `org.opencontainers.image.stopSignal` (where podman
//! keeps it: the runtime spec has no field for it). The rest is what
//! `runc spec` writes — namespaces, the usual mounts, masked and read-only
//! paths, the default capabilities — with `process.rlimits` of `RLIMIT_NOFILE`
//! and `RLIMIT_NPROC` 1024/1024 (a runtime otherwise asks for more than a
//! small host's hard limits allow).

use serde::Deserialize;
use serde_json::{json, Value};

/// The default `PATH` (containers/common's).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The annotation a stop signal goes into.
pub const STOP_SIGNAL_ANNOTATION: &str = "org.opencontainers.image.stopSignal";

/// What a runtime needs from an image config (`config` of the OCI image
/// config; docker's `container_config` is not used).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

#[derive(Deserialize)]
struct ImageConfigDoc {
    #[serde(default)]
    config: Option<RuntimeConfig>,
}

/// The runtime part of an image config (absent = all defaults).
pub fn parse_runtime_config(bytes: &[u8]) -> Result<RuntimeConfig, String> {
    let doc: ImageConfigDoc =
        serde_json::from_slice(bytes).map_err(|e| format!("image config: {e}"))?;
    Ok(doc.config.unwrap_or_default())
}

/// `process.args`: the entrypoint, then `command` when given, else the
/// image's `Cmd`. Empty = nothing to run (an error for the caller).
pub fn process_args(cfg: &RuntimeConfig, command: &[String]) -> Vec<String> {
    let mut args = cfg.entrypoint.clone().unwrap_or_default();
    if command.is_empty() {
        args.extend(cfg.cmd.clone().unwrap_or_default());
    } else {
        args.extend(command.iter().cloned());
    }
    args
}

/// `process.env`: the image's, with the default `PATH` when it sets none.
pub fn process_env(cfg: &RuntimeConfig) -> Vec<String> {
    let mut env = cfg.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    env
}

/// Resolve an image's `User` (`""`, `uid`, `name`, `uid:gid`,
/// `name:group`) against the container's `/etc/passwd` and `/etc/group`
/// text (either may be empty): `(uid, gid)`. A numeric uid without a gid
/// takes the passwd entry's group when there is one, else 0.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // name:x:uid:gid:…
    let passwd_entry = |pred: &dyn Fn(&[&str]) -> bool| -> Option<(u32, u32)> {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4 && pred(&f) {
                Some((f[2].parse().ok()?, f[3].parse().ok()?))
            } else {
                None
            }
        })
    };
    let (uid, passwd_gid) = if u.is_empty() {
        (0, Some(0))
    } else if let Ok(uid) = u.parse::<u32>() {
        (uid, passwd_entry(&|f| f[2] == u).map(|(_, g)| g))
    } else {
        let (uid, gid) = passwd_entry(&|f| f[0] == u)
            .ok_or_else(|| format!("user {u:?} is not in the container's /etc/passwd"))?;
        (uid, Some(gid))
    };
    let gid = match g {
        None | Some("") => passwd_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .find_map(|line| {
                    let f: Vec<&str> = line.split(':').collect();
                    (f.len() >= 3 && f[0] == g)
                        .then(|| f[2].parse().ok())
                        .flatten()
                })
                .ok_or_else(|| format!("group {g:?} is not in the container's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// What the bundle's `config.json` is made of besides the image config.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// `root.path`: the container's mount (absolute).
    pub root: String,
    pub hostname: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub stop_signal: Option<String>,
    /// The container's id and image id, as annotations.
    pub container_id: String,
    pub image_id: String,
}

/// The default capabilities of `runc spec` (and podman's default set).
const CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The OCI runtime `config.json` for `spec` (runtime spec 1.0.2, what
/// runc 1.1 and crun take).
pub fn runtime_config(spec: &BundleSpec) -> Value {
    let mut annotations = serde_json::Map::new();
    annotations.insert("org.storectl.container".into(), json!(spec.container_id));
    annotations.insert("org.storectl.image".into(), json!(spec.image_id));
    if let Some(sig) = &spec.stop_signal {
        annotations.insert(STOP_SIGNAL_ANNOTATION.into(), json!(sig));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.uid, "gid": spec.gid},
            "args": spec.args,
            "env": spec.env,
            "cwd": spec.cwd,
            "capabilities": {
                "bounding": CAPS, "effective": CAPS, "permitted": CAPS,
            },
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
                {"type": "RLIMIT_NPROC", "hard": 1024, "soft": 1024},
            ],
            "noNewPrivileges": true,
        },
        "root": {"path": spec.root, "readonly": false},
        "hostname": spec.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "annotations": annotations,
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"},
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{
        "Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["A=1"],
        "WorkingDir":"/srv","User":"app:staff","StopSignal":"SIGQUIT"},
        "rootfs":{"type":"layers","diff_ids":[]}}"#;

    #[test]
    fn image_config_fields_reach_the_process() {
        let cfg = parse_runtime_config(CONFIG.as_bytes()).unwrap();
        assert_eq!(process_args(&cfg, &[]), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(
            process_args(&cfg, &["exit 3".to_string()]),
            ["/bin/sh", "-c", "exit 3"]
        );
        assert_eq!(process_env(&cfg), [DEFAULT_PATH, "A=1"]);
        assert_eq!(cfg.working_dir.as_deref(), Some("/srv"));
        assert_eq!(cfg.stop_signal.as_deref(), Some("SIGQUIT"));
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:app\n";
        assert_eq!(
            resolve_user(cfg.user.as_deref().unwrap(), passwd, group),
            Ok((1000, 50))
        );
        let empty = parse_runtime_config(br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#).unwrap();
        assert_eq!(empty, RuntimeConfig::default());
        assert!(process_args(&empty, &[]).is_empty());
        assert!(parse_runtime_config(b"[").is_err());
    }

    #[test]
    fn users_resolve_as_runtimes_do() {
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\nbad:x:y:z\n";
        let group = "root:x:0:\nwheel:x:10:\n";
        assert_eq!(resolve_user("", passwd, group), Ok((0, 0)));
        assert_eq!(resolve_user("app", passwd, group), Ok((1000, 1001)));
        assert_eq!(resolve_user("1000", passwd, group), Ok((1000, 1001)));
        assert_eq!(resolve_user("4242", passwd, group), Ok((4242, 0)));
        assert_eq!(resolve_user("4242:7", "", ""), Ok((4242, 7)));
        assert_eq!(resolve_user("app:wheel", passwd, group), Ok((1000, 10)));
        assert!(resolve_user("nobody", passwd, group).is_err());
        assert!(resolve_user("bad", passwd, group).is_err());
        assert!(resolve_user("app:nogroup", passwd, group).is_err());
    }

    #[test]
    fn the_config_is_a_runnable_runtime_spec() {
        let v = runtime_config(&BundleSpec {
            root: "/r/overlay/x/merged".into(),
            hostname: "c1".into(),
            args: vec!["/bin/true".into()],
            env: vec![DEFAULT_PATH.into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            stop_signal: Some("SIGTERM".into()),
            container_id: "c".into(),
            image_id: "i".into(),
        });
        assert_eq!(v["root"]["path"], "/r/overlay/x/merged");
        assert_eq!(v["process"]["args"][0], "/bin/true");
        assert_eq!(v["annotations"][STOP_SIGNAL_ANNOTATION], "SIGTERM");
        let limits = v["process"]["rlimits"].as_array().unwrap();
        for kind in ["RLIMIT_NOFILE", "RLIMIT_NPROC"] {
            let l = limits.iter().find(|l| l["type"] == kind).unwrap();
            assert_eq!(
                (l["soft"].as_u64(), l["hard"].as_u64()),
                (Some(1024), Some(1024))
            );
        }
    }
}
