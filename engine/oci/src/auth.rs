//! Registry credentials: anonymous, or basic or bearer from the environment, or from Docker's
//! `config.json` (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, with its
//! `credsStore` and `credHelpers`). Never from the command line, where `ps` and shell history
//! would show them.

use oci_client::secrets::RegistryAuth;

use crate::{Error, Result};

/// The environment's credentials are for one registry only, named by `SHIPHAT_REGISTRY_HOST`:
/// the token flow sends them to whatever realm a registry names, so a workflow that names
/// another registry must not receive them.
pub const HOST_VAR: &str = "SHIPHAT_REGISTRY_HOST";
pub const USERNAME_VAR: &str = "SHIPHAT_REGISTRY_USERNAME";
pub const PASSWORD_VAR: &str = "SHIPHAT_REGISTRY_PASSWORD";
pub const TOKEN_VAR: &str = "SHIPHAT_REGISTRY_TOKEN";

/// Where credentials come from.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// From the environment: the registry, and its credentials.
    env: Option<(String, EnvAuth)>,
    /// Whether Docker's `config.json` is read for other registries.
    docker_config: bool,
}

#[derive(Clone)]
enum EnvAuth {
    Basic(String, String),
    Bearer(String),
}

impl std::fmt::Debug for EnvAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EnvAuth::Basic(..) => "Basic(…)",
            EnvAuth::Bearer(_) => "Bearer(…)",
        })
    }
}

impl Credentials {
    /// Anonymous everywhere.
    pub fn anonymous() -> Credentials {
        Credentials::default()
    }

    /// The environment's credentials, then Docker's `config.json`.
    pub fn from_env() -> Result<Credentials> {
        Credentials::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Credentials> {
        let auth = match (var(USERNAME_VAR), var(PASSWORD_VAR), var(TOKEN_VAR)) {
            (None, None, None) => None,
            (Some(user), Some(password), None) => Some(EnvAuth::Basic(user, password)),
            (None, None, Some(token)) => Some(EnvAuth::Bearer(token)),
            (Some(_), None, None) | (None, Some(_), None) => {
                return Err(Error::Credentials(format!(
                    "set both `{USERNAME_VAR}` and `{PASSWORD_VAR}`, or neither"
                )));
            }
            _ => {
                return Err(Error::Credentials(format!(
                    "set `{TOKEN_VAR}` or `{USERNAME_VAR}` and `{PASSWORD_VAR}`, not both"
                )));
            }
        };
        let env = match (auth, var(HOST_VAR)) {
            (Some(auth), Some(host)) => Some((host, auth)),
            (Some(_), None) => {
                return Err(Error::Credentials(format!(
                    "registry credentials are set in the environment but `{HOST_VAR}` is not; set it to the registry they are for (e.g. `ghcr.io`)"
                )));
            }
            (None, _) => None,
        };
        Ok(Credentials {
            env,
            docker_config: true,
        })
    }

    /// The credentials for `registry` (`host` or `host:port`).
    pub fn for_registry(&self, registry: &str) -> Result<RegistryAuth> {
        if let Some((host, auth)) = &self.env
            && host == registry
        {
            return Ok(match auth.clone() {
                EnvAuth::Basic(user, password) => RegistryAuth::Basic(user, password),
                EnvAuth::Bearer(token) => RegistryAuth::Bearer(token),
            });
        }
        if !self.docker_config {
            return Ok(RegistryAuth::Anonymous);
        }
        use docker_credential::{CredentialRetrievalError as E, DockerCredential};
        match docker_credential::get_credential(registry) {
            Ok(DockerCredential::UsernamePassword(user, password)) => {
                Ok(RegistryAuth::Basic(user, password))
            }
            Ok(DockerCredential::IdentityToken(token)) => Ok(RegistryAuth::Bearer(token)),
            Err(E::ConfigNotFound | E::ConfigReadError | E::NoCredentialConfigured) => {
                Ok(RegistryAuth::Anonymous)
            }
            Err(e) => Err(Error::Credentials(format!(
                "cannot read the credentials for `{registry}` from Docker's config.json: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn environment_credentials_go_to_their_registry_only() {
        let c = Credentials::from_vars(vars(&[
            (HOST_VAR, "r.io:5000"),
            (USERNAME_VAR, "ci"),
            (PASSWORD_VAR, "s3cret"),
        ]))
        .unwrap();
        assert!(
            matches!(c.for_registry("r.io:5000").unwrap(), RegistryAuth::Basic(u, p) if u == "ci" && p == "s3cret")
        );
        let c = Credentials {
            docker_config: false,
            ..c
        };
        assert!(matches!(
            c.for_registry("evil.example").unwrap(),
            RegistryAuth::Anonymous
        ));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn half_set_credentials_say_what_is_missing() {
        let e = Credentials::from_vars(vars(&[(USERNAME_VAR, "ci")])).unwrap_err();
        assert!(e.to_string().contains(PASSWORD_VAR), "{e}");
        let e = Credentials::from_vars(vars(&[(TOKEN_VAR, "t")])).unwrap_err();
        assert!(e.to_string().contains(HOST_VAR), "{e}");
        let e = Credentials::from_vars(vars(&[
            (TOKEN_VAR, "t"),
            (USERNAME_VAR, "u"),
            (PASSWORD_VAR, "p"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }
}
