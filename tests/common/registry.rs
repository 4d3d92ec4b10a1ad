//! A real `docker-registry` (Debian's) for the transfer tests: on a free
//! 127.0.0.1 port, storage in a temp dir, optionally with htpasswd basic
//! auth, killed on drop; it can be killed and restarted mid-test.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Is `tool` on `$PATH`?
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `docker-registry` on 127.0.0.1 with its storage in a temp dir, killed
/// on drop. It can be killed and restarted on the same port and storage.
pub struct Registry {
    child: Option<Child>,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Start one, with htpasswd basic auth when `user` is given.
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("storectl-registry-")
            .tempdir()
            .unwrap();
        let mut auth = String::new();
        if let Some((u, p)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd runs");
            assert!(out.status.success(), "htpasswd failed");
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: storectl-test\n    path: {}\n",
                path.display()
            );
        }
        let mut reg = Registry {
            child: None,
            addr: String::new(),
            dir,
        };
        for _ in 0..5 {
            reg.addr = format!("127.0.0.1:{}", free_port());
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {}\n{auth}",
                reg.dir.path().join("data").display(),
                reg.addr
            );
            std::fs::write(reg.dir.path().join("config.yml"), config).unwrap();
            if reg.spawn() {
                return reg;
            }
        }
        panic!("docker-registry did not start (see {:?})", reg.log());
    }

    /// Start the process on the configured port and storage; `false` when it
    /// exits before listening (the port was taken meanwhile).
    pub fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(&self.addr).is_ok() {
                self.child = Some(child);
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL the registry process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("docker-registry did not restart on {}", self.addr);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `ADDR/repo_tag`.
    pub fn r(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}
