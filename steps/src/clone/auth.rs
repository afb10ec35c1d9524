//! What a clone answers when the remote asks who it is: the job's own credentials
//! when it has some (a token over https, a key over ssh), else the worker's ssh
//! agent for ssh and nothing for https.

use git2::{Cred, CredentialType};

use crate::secrets::GitAuth;

pub(super) fn credential(
    auth: Option<&GitAuth>,
    username: Option<&str>,
    allowed: CredentialType,
) -> Result<Cred, git2::Error> {
    match auth {
        Some(GitAuth::HttpsToken { username, token }) if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => {
            Cred::userpass_plaintext(username, token)
        }
        Some(GitAuth::SshKey { private_key, passphrase }) if allowed.contains(CredentialType::SSH_KEY) => {
            Cred::ssh_key_from_memory(username.unwrap_or("git"), None, private_key, passphrase.as_deref())
        }
        // Credentials of the other kind are never offered instead.
        Some(_) => Err(git2::Error::from_str("the job's credentials do not fit what the remote asks for")),
        None if allowed.contains(CredentialType::SSH_KEY) => Cred::ssh_key_from_agent(username.unwrap_or("git")),
        None => Cred::default(),
    }
}
