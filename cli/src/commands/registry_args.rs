//! Flags shared by the verbs that talk to a registry (pull, push).

use anyhow::Context;
use storectl_transfer::registry::{ClientOptions, Credentials, RegistryClient};

#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Credentials for the registry, USER:PASS (default: $REGISTRY_AUTH_FILE
    /// or ~/.docker/config.json `auths`).
    #[arg(long, value_name = "USER:PASS")]
    creds: Option<String>,
    /// Verify the registry's TLS certificate (loopback registries use plain HTTP).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    tls_verify: bool,
    /// Always use plain HTTP (not only for loopback registries).
    #[arg(long)]
    plain_http: bool,
    /// Retries of a failed request or broken download.
    #[arg(long, default_value_t = 3)]
    retries: u32,
}

impl RegistryArgs {
    /// `--creds`, parsed.
    pub fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        self.creds
            .as_deref()
            .map(|c| Credentials::parse(c).context("--creds wants USER:PASS"))
            .transpose()
    }

    /// The options a daemon uses for this client's registry operation.
    pub fn options(&self) -> crate::daemon::pb::storectl::v1::RegistryOptions {
        crate::daemon::pb::storectl::v1::RegistryOptions {
            tls_verify_disabled: !self.tls_verify,
            plain_http: self.plain_http,
            retries: self.retries,
        }
    }

    pub fn client(&self) -> anyhow::Result<RegistryClient> {
        let opts = ClientOptions {
            insecure_skip_tls_verify: !self.tls_verify,
            plain_http: self.plain_http.then_some(true),
            retries: self.retries,
            ..ClientOptions::default()
        };
        let mut client = RegistryClient::new(opts);
        if let Some(c) = &self.creds {
            let creds = Credentials::parse(c).context("--creds wants USER:PASS")?;
            client = client.with_credentials(creds);
        }
        Ok(client)
    }
}
