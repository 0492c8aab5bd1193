//! `vault/setup.sh` and `vault/policies/*.hcl` loaded into real OpenBao servers (a homelab
//! Vault and a NAS Vault, each cluster with its own JWT auth mount), then every role logged in
//! with a service-account token and its reach checked path by path: least privilege, no reader
//! near a private CA key it does not deliver, and each job able to do its work.

use std::path::Path;

use crate::support::jobs::run_job;
use crate::support::openbao::{OpenBao, TokenIssuer, workspace_root};
use crate::support::tools::{Ran, Scratch};

/// Runs `vault/setup.sh SITE` against `bao` with JWT auth for both clusters.
fn setup(bao: &OpenBao, site: &str, homelab_keys: &Path, nas_keys: &Path) -> Ran {
    let script = workspace_root().join("vault/setup.sh");
    bao.shell(&format!(
        "HOMELAB_AUTH=jwt NAS_AUTH=jwt HOMELAB_JWT_KEYS_FILE={} NAS_JWT_KEYS_FILE={} {} {site}",
        homelab_keys.display(),
        nas_keys.display(),
        script.display()
    ))
}

/// Logs in through `mount` as `role` with `jwt`; the Vault token, or `None` when refused.
fn login(bao: &OpenBao, mount: &str, role: &str, jwt: &str) -> Option<String> {
    let ran = bao.cli(&[
        "write",
        "-field=token",
        &format!("auth/{mount}/login"),
        &format!("role={role}"),
        &format!("jwt={jwt}"),
    ]);
    ran.success.then(|| ran.stdout.trim().to_owned())
}

fn can_read(bao: &OpenBao, token: &str, path: &str) -> bool {
    bao.cli_as(token, &["kv", "get", "-mount=secret", path])
        .success
}

fn can_write(bao: &OpenBao, token: &str, path: &str) -> bool {
    bao.cli_as(token, &["kv", "put", "-mount=secret", path, "probe=1"])
        .success
}

struct Clusters {
    dir: Scratch,
    homelab: TokenIssuer,
    nas: TokenIssuer,
}

impl Clusters {
    fn new() -> Self {
        let dir = Scratch::new();
        let homelab_dir = Scratch::new();
        let nas_dir = Scratch::new();
        let homelab = TokenIssuer::new(&homelab_dir);
        let nas = TokenIssuer::new(&nas_dir);
        dir.write("homelab.pub", &homelab.public_key_pem);
        dir.write("nas.pub", &nas.public_key_pem);
        Self { dir, homelab, nas }
    }

    fn keys(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        (
            self.dir.path().join("homelab.pub"),
            self.dir.path().join("nas.pub"),
        )
    }
}

#[test]
fn the_homelab_vault_gives_each_role_only_its_paths() {
    let clusters = Clusters::new();
    let (homelab_keys, nas_keys) = clusters.keys();
    let bao = OpenBao::start();
    setup(&bao, "homelab", &homelab_keys, &nas_keys).ok();
    // Idempotent: a second run changes nothing and succeeds.
    setup(&bao, "homelab", &homelab_keys, &nas_keys).ok();

    // The bootstrap Job, with its role, creates the CA for real.
    let jwt = clusters.homelab.token("istio-system", "istio-ca-bootstrap");
    let jwt_file = clusters.dir.write("bootstrap.jwt", &jwt);
    let boot = run_job(
        "bootstrap-job",
        &[
            ("VAULT_ADDR", bao.addr.as_str()),
            ("VAULT_AUTH_METHOD", "jwt"),
            ("VAULT_SA_TOKEN_PATH", jwt_file.to_str().unwrap()),
        ],
        clusters.dir.path(),
    );
    assert_eq!(boot.code, 0, "{}", boot.stderr);
    let bootstrap = login(&bao, "jwt", "istio-ca-bootstrap", &jwt).unwrap();
    assert!(
        can_read(&bao, &bootstrap, "istio/ca") && can_read(&bao, &bootstrap, "istio/clusters/nas")
    );
    assert!(!can_read(&bao, &bootstrap, "pki/issuer"));

    let reader = login(
        &bao,
        "jwt",
        "istio-ca-reader",
        &clusters
            .homelab
            .token("istio-system", "istio-cacerts-reader"),
    )
    .unwrap();
    assert!(can_read(&bao, &reader, "istio/clusters/homelab"));
    for path in ["istio/ca", "istio/clusters/nas"] {
        assert!(
            !can_read(&bao, &reader, path),
            "the homelab reader can read {path}"
        );
    }
    assert!(!can_write(&bao, &reader, "istio/clusters/homelab"));

    let sync = login(
        &bao,
        "jwt-nas",
        "istio-ca-sync",
        &clusters.nas.token("istio-system", "istio-ca-sync"),
    )
    .unwrap();
    assert!(can_read(&bao, &sync, "istio/clusters/nas"));
    for path in ["istio/ca", "istio/clusters/homelab"] {
        assert!(
            !can_read(&bao, &sync, path),
            "the NAS sync role can read {path}"
        );
    }
    assert!(!can_write(&bao, &sync, "istio/clusters/nas"));

    // Each cluster's tokens work only through its own mount, and only for the bound account.
    assert_eq!(
        login(
            &bao,
            "jwt",
            "istio-ca-sync",
            &clusters.nas.token("istio-system", "istio-ca-sync")
        ),
        None
    );
    assert_eq!(
        login(
            &bao,
            "jwt-nas",
            "istio-ca-sync",
            &clusters.homelab.token("istio-system", "istio-ca-sync")
        ),
        None
    );
    assert_eq!(
        login(
            &bao,
            "jwt",
            "istio-ca-bootstrap",
            &clusters.homelab.token("default", "istio-ca-bootstrap")
        ),
        None
    );
}

#[test]
fn the_nas_vault_gives_each_role_only_its_paths() {
    let clusters = Clusters::new();
    let (homelab_keys, nas_keys) = clusters.keys();
    let bao = OpenBao::start();
    setup(&bao, "nas", &homelab_keys, &nas_keys).ok();

    let jwt = clusters.nas.token("pki", "client-issuer");
    let jwt_file = clusters.dir.write("issuer.jwt", &jwt);
    let clients = clusters.dir.write(
        "clients.yaml",
        "clients:\n  - name: alice\n    email: alice@example.org\n",
    );
    let run_issuer = || {
        run_job(
            "client-issuer-job",
            &[
                ("VAULT_ADDR", bao.addr.as_str()),
                ("VAULT_AUTH_METHOD", "jwt"),
                ("VAULT_SA_TOKEN_PATH", jwt_file.to_str().unwrap()),
                ("CLIENTS_FILE", clients.to_str().unwrap()),
            ],
            clusters.dir.path(),
        )
    };
    let issued = run_issuer();
    assert_eq!(issued.code, 0, "{}", issued.stderr);
    // The removal path lists users: a second run with nobody declared (and saying so, past
    // the mass-revocation guard) revokes alice.
    clusters
        .dir
        .write("clients.yaml", "clients: []\nallow_revoke_all: true\n");
    let revoking = run_issuer();
    assert_eq!(revoking.code, 0, "{}", revoking.stderr);
    assert_eq!(
        bao.kv_field("pki/clients/alice", "status").trim(),
        "revoked"
    );

    // The previous setup's ESO token.
    let eso = bao
        .cli(&[
            "token",
            "create",
            "-field=token",
            "-policy=eso-pki-reader",
            "-ttl=1h",
        ])
        .ok()
        .stdout
        .trim()
        .to_owned();
    assert!(can_read(&bao, &eso, "pki/ca"));
    for path in ["pki/issuer", "pki/clients/alice", "pki/previous-ca"] {
        assert!(
            !can_read(&bao, &eso, path),
            "the ESO reader can read {path}"
        );
    }
    assert!(!can_write(&bao, &eso, "pki/ca"));
    let issuer_token = login(&bao, "jwt", "client-issuer", &jwt).unwrap();
    assert!(!can_read(&bao, &issuer_token, "istio/ca"));
    // The move of a previous CA's key: its own path, and destroying old versions of the
    // bundle entry, but of no other entry.
    assert!(can_write(&bao, &issuer_token, "pki/previous-ca"));
    assert!(can_read(&bao, &issuer_token, "pki/previous-ca"));
    let destroy = |token: &str, path: &str| {
        bao.cli_as(
            token,
            &["kv", "destroy", "-mount=secret", "-versions=1", path],
        )
        .success
    };
    assert!(destroy(&issuer_token, "pki/ca"));
    for path in ["pki/issuer", "pki/clients/alice"] {
        assert!(
            !destroy(&issuer_token, path),
            "the client issuer can destroy versions of {path}"
        );
    }
    assert!(!destroy(&eso, "pki/ca"), "the ESO reader can destroy");
    assert_eq!(
        login(
            &bao,
            "jwt",
            "client-issuer",
            &clusters.homelab.token("pki", "client-issuer")
        ),
        None
    );
}

/// `vault/setup.sh` run from another directory with file arguments relative to it, twice
/// (idempotent); then the previous scripts' user step: a user logged in through any auth method (here
/// userpass) whose identity entity is named after their client reads their own bundle with
/// `vault kv get -field=p12`, and no one else's.
#[test]
fn each_user_reads_only_their_own_bundle() {
    let clusters = Clusters::new();
    let bao = OpenBao::start();
    let script = workspace_root().join("vault/setup.sh");
    let dir = clusters.dir.path().display();
    let from_elsewhere = format!(
        "cd {dir} && HOMELAB_AUTH=jwt NAS_AUTH=jwt HOMELAB_JWT_KEYS_FILE=homelab.pub \
         NAS_JWT_KEYS_FILE=nas.pub {} nas",
        script.display()
    );
    bao.shell(&from_elsewhere).ok();
    bao.shell(&from_elsewhere).ok();

    let clients = clusters.dir.write(
        "clients.yaml",
        "clients:\n  - name: alice\n    email: alice@example.org\n  - name: bob\n    email: bob@example.org\n",
    );
    let issued = run_job(
        "client-issuer-job",
        &[
            ("VAULT_ADDR", bao.addr.as_str()),
            ("VAULT_TOKEN", crate::support::openbao::ROOT_TOKEN),
            ("CLIENTS_FILE", clients.to_str().unwrap()),
        ],
        clusters.dir.path(),
    );
    assert_eq!(issued.code, 0, "{}", issued.stderr);

    // The operator's step per user (README): an entity named after the client, carrying the
    // policy, and an alias tying the user's login to it.
    bao.shell(
        "vault auth enable userpass >/dev/null
         accessor=$(vault read -field=accessor sys/auth/userpass)
         for user in alice bob mallory; do
           vault write auth/userpass/users/$user password=pw-$user >/dev/null
           id=$(vault write -field=id identity/entity name=$user policies=pki-client-self)
           vault write identity/entity-alias name=$user canonical_id=$id mount_accessor=$accessor >/dev/null
         done",
    )
    .ok();
    let fetch = |user: &str, entry: &str| {
        bao.shell(&format!(
            "VAULT_TOKEN=$(vault login -token-only -method=userpass username={user} password=pw-{user}) \
             vault kv get -field=p12 secret/pki/clients/{entry}"
        ))
    };
    let own = fetch("alice", "alice");
    assert!(own.success, "{}", own.stderr);
    assert_eq!(
        own.stdout.trim(),
        bao.kv_field("pki/clients/alice", "p12").trim()
    );
    assert!(fetch("bob", "bob").success);
    for (user, entry) in [("alice", "bob"), ("bob", "alice"), ("mallory", "alice")] {
        let denied = fetch(user, entry);
        assert!(!denied.success, "{user} read {entry}");
        assert!(
            denied.stderr.contains("permission denied"),
            "{}",
            denied.stderr
        );
    }
    assert!(
        !bao.shell("VAULT_TOKEN=$(vault login -token-only -method=userpass username=alice password=pw-alice) vault kv get secret/pki/issuer").success
    );

    // Without a Vault CLI on PATH it says so and stops, before touching anything.
    let bare = bao.shell(&format!(
        "cd {dir} && PATH=/usr/bin:/bin; export PATH; {} nas",
        script.display()
    ));
    assert!(!bare.success);
    assert!(
        bare.stderr.contains("neither vault nor bao is on PATH"),
        "{}",
        bare.stderr
    );
}
