//! Containers as processes: the command line that puts a container's
//! program in its pod's network namespace, in a mount namespace of its own
//! with its volumes bind-mounted, with only its environment, as its user
//! and with its capabilities — built by a pure function, then spawned
//! under `mesh_process` supervision.

use super::plan::{ContainerPlan, setpriv_args};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `PATH` inside containers (what container runtimes set).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A volume's host directory mounted at a container path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The directory on the node.
    pub source: PathBuf,
    /// Where the container sees it.
    pub target: String,
    /// Read-only.
    pub read_only: bool,
}

/// Makes every mount of the container's view read-only but `/proc`,
/// `/sys` and `/dev` (as a runtime does with `readOnlyRootFilesystem`: the
/// container's `/dev` and `/proc` stay as they are) and those already
/// read-only. The node has no per-container root filesystem, so its whole
/// tree is what the container sees; the remounts change only this mount
/// namespace's copies of the mounts (flags never propagate), and `ip netns
/// exec` made it a slave of the node's, so nothing made here reaches the
/// node or another container. Mount points are read from `mountinfo`
/// (octal escapes such as `\040` undone by `printf %b`). A mount that
/// failed to remount is skipped only if it is gone by then (the node and
/// every other user of the machine add and remove `/run/netns/*` entries
/// at any time, and their unmounts reach this namespace); any other
/// failure ends the script (`set -e`), so a container never runs with a
/// writable root it was promised read-only.
const READ_ONLY_ROOT: &str = "set -f; m=$(cat /proc/self/mountinfo); \
printf '%s\\n' \"$m\" | while read -r _ _ _ _ p o _; do \
case \"$p\" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue;; esac; \
case \"$o\" in ro|ro,*) continue;; esac; \
mount -o remount,bind,ro \"$(printf %b \"$p\")\" || \
if cut -d' ' -f5 /proc/self/mountinfo | grep -qxF \"$p\"; then exit 1; fi; done; ";

/// The script run as root in the container's mount namespace before
/// `env -i`: the root made read-only if asked, then the volumes bound
/// (shallowest target first, each mount point made if missing, as
/// container runtimes do: a volume mounted on `/run` hides the node's
/// `/run/secrets/...`), each remounted explicitly writable or read-only —
/// a bind inherits the read-only flag of the mount its source lies on, so
/// after a read-only root a writable volume has to be made so. `$1 $2` are
/// each mount's source and target, shifted away; the rest is the command.
pub fn mount_script(read_only_root: bool, mounts: &[&BindMount]) -> String {
    let mut script = String::from("set -e; ");
    if read_only_root {
        script.push_str(READ_ONLY_ROOT);
    }
    for m in mounts {
        let mode = if m.read_only { "ro" } else { "rw" };
        script.push_str(&format!(
            "mkdir -p \"$2\"; mount --bind \"$1\" \"$2\"; mount -o remount,bind,{mode} \"$2\"; shift 2; "
        ));
    }
    script.push_str("exec \"$@\"");
    script
}

/// The whole command line: `ip netns exec POD` (which also gives the
/// process a mount namespace of its own, slave to the node's: the node's
/// later unmounts, such as another pod's `/run/netns` entry, reach it, and
/// nothing it mounts reaches the node), then [`mount_script`] by `sh` in
/// that namespace when there is a volume or a read-only root, `env -i` with
/// the container's environment only, `setpriv` for user and capabilities,
/// the program.
pub fn command_line(c: &ContainerPlan, pod_ns: &str, hostname: &str, mounts: &[BindMount]) -> Vec<String> {
    let mut argv: Vec<String> = vec!["ip".into(), "netns".into(), "exec".into(), pod_ns.into()];
    if !mounts.is_empty() || c.read_only_root {
        let mut mounts: Vec<&BindMount> = mounts.iter().collect();
        mounts.sort_by_key(|m| m.target.split('/').filter(|c| !c.is_empty()).count());
        argv.extend(["sh".into(), "-c".into(), mount_script(c.read_only_root, &mounts), "mount".into()]);
        for m in &mounts {
            argv.push(m.source.display().to_string());
            argv.push(m.target.clone());
        }
    }
    argv.extend(["env".into(), "-i".into(), format!("PATH={PATH}"), format!("HOSTNAME={hostname}")]);
    argv.extend(c.env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.push("setpriv".into());
    argv.extend(setpriv_args(c));
    argv.push(c.program.display().to_string());
    argv.extend(c.args.iter().cloned());
    argv
}

/// Starts a container; its stdout and stderr go to `log`.
///
/// The process dies with the calling thread (its parent-death signal):
/// call from a thread that lives as long as the node (a runtime worker).
pub fn spawn(
    c: &ContainerPlan,
    pod_ns: &str,
    hostname: &str,
    mounts: &[BindMount],
    log: &Path,
) -> anyhow::Result<mesh_process::Child> {
    let argv = command_line(c, pod_ns, hostname, mounts);
    let (program, args) = argv.split_first().ok_or_else(|| anyhow::anyhow!("empty command line"))?;
    let spec = mesh_process::Spec::new(format!("{hostname}/{}", c.name), program, log)
        .args(args)
        .append(true)
        .stop_grace(Duration::from_secs(1));
    Ok(mesh_process::Child::spawn(spec)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::plan::Role;

    fn plan() -> ContainerPlan {
        ContainerPlan {
            name: "app".into(),
            image: "mesh-test-app".into(),
            role: Role::App,
            program: "/bin/app".into(),
            args: vec!["serve".into(), "--x=$y".into()],
            env: vec![("A".into(), "1 2".into())],
            user: (1000, 1000),
            caps: vec![],
            no_new_privs: true,
            read_only_root: false,
            mounts: vec![],
            startup: None,
            readiness: None,
            liveness: None,
        }
    }

    /// Catches the container inheriting the node's environment, running as
    /// root, or outside its pod's namespace: the wrapper order matters (the
    /// user change last, after the mounts that need root).
    #[test]
    fn the_wrappers_in_order() {
        let argv = command_line(&plan(), "pod-ns", "web-1", &[]);
        let s = argv.join(" ");
        assert!(s.starts_with("ip netns exec pod-ns env -i PATH="), "{s}");
        assert!(
            s.contains(" HOSTNAME=web-1 A=1 2 setpriv --pdeathsig keep --inh-caps -all --bounding-set -all"),
            "{s}"
        );
        assert!(s.ends_with("--reuid 1000 --regid 1000 --clear-groups --no-new-privs /bin/app serve --x=$y"), "{s}");
        assert!(argv.contains(&"A=1 2".to_string()), "one word per variable");
    }

    /// Catches a read-only mount left writable, mounts done after the
    /// user change (a non-root user cannot mount), or a deeper mount made
    /// before the one it lies under (`/run` would hide it).
    #[test]
    fn mounts_before_the_user_change() {
        let m = [
            BindMount { source: "/n/tok".into(), target: "/var/run/t".into(), read_only: true },
            BindMount { source: "/n/run".into(), target: "/run".into(), read_only: false },
        ];
        let argv = command_line(&plan(), "p", "h", &m);
        assert_eq!(&argv[4..6], ["sh", "-c"]);
        let script = &argv[6];
        assert_eq!(script.matches("mount --bind").count(), 2);
        assert_eq!(script.matches("remount,bind,ro").count(), 1);
        assert_eq!(script.matches("remount,bind,rw").count(), 1);
        assert!(!script.contains("mountinfo"), "the root stays as it is without the flag: {script}");
        assert_eq!(&argv[7..12], ["mount", "/n/run", "/run", "/n/tok", "/var/run/t"]);
        assert_eq!(script.matches("mkdir -p \"$2\"; mount --bind").count(), 2);
        let setpriv = argv.iter().position(|a| a == "setpriv").unwrap();
        assert!(setpriv > 12);
    }

    /// Catches `readOnlyRootFilesystem` ignored (no `sh` without volumes),
    /// the root made read-only after the volumes (they would be read-only
    /// too) or a writable volume left with the read-only flag its bind
    /// inherits from the root.
    #[test]
    fn read_only_root_before_the_volumes() {
        let mut p = plan();
        p.read_only_root = true;
        let argv = command_line(&p, "p", "h", &[]);
        assert_eq!(&argv[4..6], ["sh", "-c"]);
        assert!(argv[6].contains("remount,bind,ro \"$(printf %b"), "{}", argv[6]);
        assert_eq!(argv[7], "mount");
        assert_eq!(argv[8], "env");

        let m = [BindMount { source: "/n/data".into(), target: "/data".into(), read_only: false }];
        let script = &command_line(&p, "p", "h", &m)[6];
        let root = script.find("mountinfo").unwrap();
        let bind = script.find("mount --bind").unwrap();
        assert!(root < bind, "{script}");
        assert!(script[bind..].contains("mount -o remount,bind,rw \"$2\""), "{script}");
    }

    /// The script for real, in a mount namespace of its own (`unshare -m`;
    /// needs root, skipped otherwise, a failure when `CI=true`). Catches a
    /// root left writable, a writable volume left read-only (its bind
    /// inherits the flag), and the node's own view changed.
    #[test]
    fn the_script_makes_the_root_read_only_but_not_the_volume() {
        let probe = std::process::Command::new("unshare").args(["-m", "true"]).status();
        if !probe.is_ok_and(|s| s.success()) {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "unshare -m needs root");
            eprintln!("skipped: unshare -m is not permitted here");
            return;
        }
        let src = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let stray = std::env::temp_dir().join(format!("mesh-node-script-{}", std::process::id()));
        let m = BindMount { source: src.path().into(), target: target.path().display().to_string(), read_only: false };
        let script = mount_script(true, &[&m]);
        let inner = "touch \"$0/volume\"; echo $?; touch \"$1\" 2>/dev/null; echo $?";
        let out = std::process::Command::new("unshare")
            .args(["-m", "sh", "-c", &script, "mount"])
            .arg(src.path())
            .arg(target.path())
            .args(["sh", "-c", inner])
            .arg(target.path())
            .arg(&stray)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&stray);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout, "0\n1\n", "volume written, /tmp refused; stderr: {}", String::from_utf8_lossy(&out.stderr));
        assert!(src.path().join("volume").exists(), "the write went through the bind");
        std::fs::write(&stray, b"x").expect("the node's /tmp is still writable");
        let _ = std::fs::remove_file(&stray);
    }
}
