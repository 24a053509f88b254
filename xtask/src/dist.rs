//! `cargo xtask dist`: the release build packaged for operators under target/dist/, a tarball and
//! a Debian package (built by dpkg-deb), with the man page, completions and help texts generated
//! from the built binary. `--check` then installs the package here, runs it on a namespace
//! interface with the unit's capabilities only, and purges it.

use std::{
    env,
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{build, prereqs, run, show};

mod check;
mod container;

/// The workspace version; the xtask shares it (`version.workspace = true`).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What packaging runs: dpkg-shlibdeps (the Depends line), help2man (the man page), lintian,
/// and systemd-analyze (the unit's check).
const DIST_DEBS: &[&str] = &["dpkg-dev", "help2man", "lintian", "systemd"];
/// What `--check` runs besides the package: ip, nsenter and setpriv, and /bin/kill (the unit's
/// ExecReload).
const CHECK_DEBS: &[&str] = &["iproute2", "util-linux", "procps"];
/// Depends that dpkg-shlibdeps cannot see: the unit's `ExecReload=/bin/kill`.
const EXTRA_DEPENDS: &str = "procps";

/// Where the package installs things, relative to `/`. The unit and the maintainer scripts in
/// packaging/ spell the same paths.
const BIN: &str = "usr/sbin/guard";
const CONFIG: &str = "etc/guard/guard.toml";
const UNIT: &str = "lib/systemd/system/guard.service";
const STATE_DIR: &str = "var/lib/guard";
const MAN: &str = "usr/share/man/man8/guard.8.gz";
const DOC_DIR: &str = "usr/share/doc/guard";
/// Per shell: the `guard completions` argument, the file name in the tarball, the package path.
const COMPLETIONS: &[(&str, &str, &str)] = &[
    (
        "bash",
        "guard.bash",
        "usr/share/bash-completion/completions/guard",
    ),
    ("zsh", "_guard", "usr/share/zsh/vendor-completions/_guard"),
    (
        "fish",
        "guard.fish",
        "usr/share/fish/vendor_completions.d/guard.fish",
    ),
];
/// The maintainer scripts in packaging/debian/, installed as DEBIAN/<name>.
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// What `cargo xtask dist` made.
struct Dist {
    tarball: PathBuf,
    deb: PathBuf,
    /// The package's root (with DEBIAN/), kept for `--check`'s upgrade package.
    deb_root: PathBuf,
    /// The commit the binary says it was built from.
    commit: Option<String>,
}

/// Builds the release binary and packages it; with `check`, then proves the package on this
/// host (needs root).
pub fn dist(check: bool) -> Result<()> {
    if check && !prereqs::is_root()? {
        bail!(
            "cargo xtask dist --check needs root: it installs the package, creates a network namespace and attaches XDP there. Run it as root (sudo -E env \"PATH=$PATH\" cargo xtask dist --check)."
        );
    }
    let dist = package()?;
    if check {
        check::check_on_this_host(&dist)?;
    }
    println!("{}", dist.tarball.display());
    println!("{}", dist.deb.display());
    Ok(())
}

/// The architecture names of the host (what the release build targets): the tarball's
/// (`uname -m`) and Debian's.
fn arch() -> Result<(&'static str, &'static str)> {
    match env::consts::ARCH {
        "x86_64" => Ok(("x86_64", "amd64")),
        "aarch64" => Ok(("aarch64", "arm64")),
        other => bail!("cargo xtask dist knows no Debian architecture for {other}"),
    }
}

/// The workspace root: the parent of the xtask crate.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
}

/// The commit to stamp into the binary (`-dirty` when tracked files differ from it) and the
/// time of that commit, for reproducible archive timestamps.
struct Git {
    commit: Option<String>,
    epoch: u64,
}

impl Git {
    fn read() -> Self {
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git")
                .args(args)
                .current_dir(root())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let commit = git(&["rev-parse", "--short", "HEAD"]).filter(|c| !c.is_empty());
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        let epoch = git(&["log", "-1", "--format=%ct"])
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            });
        Self {
            commit: commit.map(|c| if dirty { format!("{c}-dirty") } else { c }),
            epoch,
        }
    }
}

/// The package's Maintainer: DEBFULLNAME and DEBEMAIL as dch reads them, else git's user.
fn maintainer() -> Result<String> {
    let git = |key: &str| {
        Command::new("git")
            .args(["config", key])
            .current_dir(root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let name = env::var("DEBFULLNAME").ok().or_else(|| git("user.name"));
    let email = env::var("DEBEMAIL").ok().or_else(|| git("user.email"));
    match (name, email) {
        (Some(name), Some(email)) => Ok(format!("{name} <{email}>")),
        _ => bail!(
            "the package needs a Maintainer: set DEBFULLNAME and DEBEMAIL (or git config user.name and user.email)"
        ),
    }
}

/// Builds the release binary, generates what comes from it, and writes the tarball and the
/// Debian package under target/dist/. Both are made in the staging directory and moved there
/// only once the unit and the package have passed their checks.
fn package() -> Result<Dist> {
    let (arch_tar, arch_deb) = arch()?;
    prereqs::ensure_debs(DIST_DEBS)?;
    let maintainer = maintainer()?;
    let git = Git::read();
    if let Some(commit) = &git.commit {
        // guard-userspace/build.rs prefers this to asking git, so a dirty tree says so.
        // SAFETY: the xtask is single-threaded here; nothing reads the environment concurrently.
        unsafe { env::set_var("GUARD_GIT_COMMIT", commit) };
    }
    let built = build::all(true)?;
    let target = built
        .parent()
        .and_then(Path::parent)
        .context("the guard binary is not under <target>/release/")?;
    let out = target.join("dist");
    let name = format!("guard-{VERSION}-{arch_tar}-linux");
    let tarball = out.join(format!("{name}.tar.gz"));
    let deb = out.join(format!("guard_{VERSION}_{arch_deb}.deb"));
    let stage = out.join(format!("stage-{VERSION}"));
    for old in [&tarball, &deb] {
        if old.exists() {
            fs::remove_file(old).with_context(|| format!("remove {}", old.display()))?;
        }
    }
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("remove {}", stage.display()))?;
    }
    mkdirs(&stage)?;

    // What is shipped is stripped like dh_strip does; the eBPF object inside is data and
    // keeps its BTF.
    let guard = stage.join("guard");
    fs::copy(&built, &guard).with_context(|| format!("copy {}", built.display()))?;
    run(&mut crate::cmd(
        "strip",
        &[
            "--remove-section=.comment",
            "--remove-section=.note",
            path_str(&guard)?,
        ],
    ))?;
    let made = Generated::from_binary(&guard, &stage, git.epoch)?;
    if let Some(commit) = &git.commit
        && !made.long_version.contains(commit.as_str())
    {
        bail!(
            "`guard --version` does not name commit {commit}:\n{}",
            made.long_version
        );
    }
    let contents = Contents {
        guard: fs::read(&guard)?,
        made,
        readme: operator_readme()?,
        third_party: third_party()?,
    };

    let staged_tarball = tarball_tree(&stage, &name, &contents, git.epoch)?;
    let deb_root = debian_tree(&stage, &contents, &maintainer, &git, arch_deb)?;
    verify_unit(&stage, &deb_root)?;
    let staged_deb = stage.join(deb.file_name().context("a .deb file name")?);
    dpkg_deb(&deb_root, &staged_deb, git.epoch)?;
    lintian(&staged_deb)?;

    fs::rename(&staged_tarball, &tarball)?;
    fs::rename(&staged_deb, &deb)?;
    eprintln!(
        "xtask: dist: {} and {} (commit {})",
        tarball.display(),
        deb.display(),
        git.commit.as_deref().unwrap_or("unknown")
    );
    Ok(Dist {
        tarball,
        deb,
        deb_root,
        commit: git.commit,
    })
}

/// What goes into both the tarball and the package.
struct Contents {
    /// The stripped binary.
    guard: Vec<u8>,
    made: Generated,
    readme: String,
    third_party: String,
}

/// Writes the tarball's tree `stage/<name>/` and archives it as `stage/<name>.tar.gz`, owned
/// by root and dated `epoch` whoever builds it.
fn tarball_tree(stage: &Path, name: &str, c: &Contents, epoch: u64) -> Result<PathBuf> {
    let tree = stage.join(name);
    put(&tree, "guard", &c.guard, 0o755)?;
    put(&tree, "guard.toml", c.made.config.as_bytes(), 0o644)?;
    put(&tree, "guard.service", &packaging("guard.service")?, 0o644)?;
    put(&tree, "guard.8", c.made.man.as_bytes(), 0o644)?;
    put(&tree, "guard-help.txt", c.made.help.as_bytes(), 0o644)?;
    for ((_, file, _), text) in COMPLETIONS.iter().zip(&c.made.completions) {
        let rel = format!("completions/{file}");
        put(&tree, &rel, text.as_bytes(), 0o644)?;
    }
    put(&tree, "README.md", c.readme.as_bytes(), 0o644)?;
    put(&tree, "THIRD-PARTY.txt", c.third_party.as_bytes(), 0o644)?;
    for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let text = fs::read(root().join(license)).with_context(|| format!("read {license}"))?;
        put(&tree, license, &text, 0o644)?;
    }
    let tarball = stage.join(format!("{name}.tar.gz"));
    run(&mut crate::cmd(
        "tar",
        &[
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            &format!("--mtime=@{epoch}"),
            "--use-compress-program=gzip -9n",
            "-cf",
            path_str(&tarball)?,
            "-C",
            path_str(stage)?,
            name,
        ],
    ))?;
    Ok(tarball)
}

/// Writes the package's tree, `stage/deb/`, and returns it: the files where they install, and
/// DEBIAN/ with the control file, the conffiles, the maintainer scripts and the md5sums.
fn debian_tree(
    stage: &Path,
    c: &Contents,
    maintainer: &str,
    git: &Git,
    arch_deb: &str,
) -> Result<PathBuf> {
    let root_dir = &stage.join("deb");
    put(root_dir, BIN, &c.guard, 0o755)?;
    put(root_dir, CONFIG, c.made.config.as_bytes(), 0o644)?;
    put(root_dir, UNIT, &packaging("guard.service")?, 0o644)?;
    // 0755 like any directory; the files in it are the daemon's, 0600 (the unit's UMask).
    mkdirs(&root_dir.join(STATE_DIR))?;
    for ((_, _, path), text) in COMPLETIONS.iter().zip(&c.made.completions) {
        put(root_dir, path, text.as_bytes(), 0o644)?;
    }
    put(root_dir, MAN, &gzip(c.made.man.as_bytes())?, 0o644)?;
    let changelog = changelog(maintainer, git.commit.as_deref(), git.epoch)?;
    for (file, bytes) in [
        ("README.md", c.readme.as_bytes().to_vec()),
        ("THIRD-PARTY.txt", c.third_party.as_bytes().to_vec()),
        ("copyright", packaging("debian/copyright")?),
        ("changelog.gz", gzip(changelog.as_bytes())?),
    ] {
        put(root_dir, &format!("{DOC_DIR}/{file}"), &bytes, 0o644)?;
    }
    let overrides = packaging("debian/lintian-overrides")?;
    put(
        root_dir,
        "usr/share/lintian/overrides/guard",
        &overrides,
        0o644,
    )?;

    let depends = depends(stage, &root_dir.join(BIN))?;
    let control = String::from_utf8(packaging("debian/control.in")?)?
        .replace("@VERSION@", VERSION)
        .replace("@ARCH@", arch_deb)
        .replace("@MAINTAINER@", maintainer)
        .replace(
            "@INSTALLED_SIZE@",
            &installed_size_kib(root_dir)?.to_string(),
        )
        .replace("@DEPENDS@", &depends);
    ensure!(
        !has_placeholder(&control),
        "packaging/debian/control.in has a placeholder the xtask does not fill:\n{control}"
    );
    put(root_dir, "DEBIAN/control", control.as_bytes(), 0o644)?;
    // An upgrade never overwrites the operator's edits of a conffile (dpkg asks if both changed).
    let conffiles = format!("/{CONFIG}\n");
    put(root_dir, "DEBIAN/conffiles", conffiles.as_bytes(), 0o644)?;
    for script in SCRIPTS {
        let text = packaging(&format!("debian/{script}"))?;
        put(root_dir, &format!("DEBIAN/{script}"), &text, 0o755)?;
    }
    md5sums(root_dir)?;
    Ok(root_dir.clone())
}

/// Whether `text` still holds an `@NAME@` placeholder (capitals and underscores).
fn has_placeholder(text: &str) -> bool {
    let parts: Vec<&str> = text.split('@').collect();
    // Every part but the first and the last lies between two `@`.
    parts.len() > 2
        && parts[1..parts.len() - 1]
            .iter()
            .any(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
}

/// What is generated by running the built binary.
struct Generated {
    long_version: String,
    /// /etc/guard/guard.toml: packaging/guard.toml.head, then `guard config default`.
    config: String,
    /// Per entry of [`COMPLETIONS`], `guard completions <shell>`.
    completions: Vec<String>,
    /// `guard ... --help` of every command and subcommand.
    help: String,
    /// guard(8), by help2man.
    man: String,
}

impl Generated {
    fn from_binary(guard: &Path, stage: &Path, epoch: u64) -> Result<Self> {
        let long_version = capture(&mut bin(guard, &["--version"]))?;
        ensure!(
            long_version.starts_with(&format!("guard {VERSION}")),
            "`guard --version` does not start with `guard {VERSION}`:\n{long_version}"
        );

        let default = capture(&mut bin(guard, &["config", "default"]))?;
        let config = format!(
            "{}{default}",
            String::from_utf8(packaging("guard.toml.head")?)?
        );
        let staged = stage.join("guard.toml");
        fs::write(&staged, &config)?;
        capture(&mut bin(guard, &["config", "check", path_str(&staged)?]))
            .context("the config the package installs does not pass `guard config check`")?;

        let completions = COMPLETIONS
            .iter()
            .map(|(shell, _, _)| {
                capture(&mut bin(guard, &["completions", shell])).with_context(|| {
                    format!("`guard completions {shell}` failed: the package ships completions, so the binary must make them")
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let mut commands = Vec::new();
        help_tree(guard, &mut Vec::new(), &mut commands)?;
        let mut help = String::new();
        for (words, text) in &commands {
            let line = std::iter::once("guard")
                .chain(words.iter().map(String::as_str))
                .chain(["--help"])
                .collect::<Vec<_>>()
                .join(" ");
            writeln!(help, "$ {line}\n{}", text.trim_end())?;
            help.push('\n');
        }

        let man = man_page(guard, stage, &commands, epoch)?;
        Ok(Self {
            long_version,
            config,
            completions,
            help,
            man,
        })
    }
}

/// A command running the guard binary at `guard`, with the environment of a host without a
/// Rust toolchain.
fn bin(guard: &Path, args: &[&str]) -> Command {
    let mut c = bare(guard);
    c.args(args);
    c
}

/// `program` with an emptied environment and PATH holding only the system directories: what a
/// host without Rust offers (no ~/.cargo/bin, no CARGO_* or RUSTUP_* variables).
fn bare(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LC_ALL", "C.UTF-8")
        .current_dir("/");
    c
}

/// Walks `guard [words] --help` depth first, in the order the help lists the commands.
fn help_tree(
    guard: &Path,
    words: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, String)>,
) -> Result<()> {
    let mut args: Vec<&str> = words.iter().map(String::as_str).collect();
    args.push("--help");
    let text = capture(&mut bin(guard, &args))?;
    let subs = subcommands(&text);
    out.push((words.clone(), text));
    for sub in subs {
        words.push(sub);
        help_tree(guard, words, out)?;
        words.pop();
    }
    Ok(())
}

/// The commands a clap help text lists under `Commands:`, without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // A command's line is indented by two; wrapped descriptions by more.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// guard(8): help2man on the binary, with packaging/guard.8.h2m and every subcommand's help.
fn man_page(
    guard: &Path,
    stage: &Path,
    commands: &[(Vec<String>, String)],
    epoch: u64,
) -> Result<String> {
    let mut include = String::from_utf8(packaging("guard.8.h2m")?)?;
    include.push_str("\n[COMMANDS IN DETAIL]\n");
    for (words, text) in commands.iter().filter(|(w, _)| !w.is_empty()) {
        writeln!(include, ".SS \"guard {}\"\n.nf", words.join(" "))?;
        for line in text.trim_end().lines() {
            include.push_str(&roff_line(line));
            include.push('\n');
        }
        include.push_str(".fi\n");
    }
    let h2m = stage.join("guard.8.h2m");
    fs::write(&h2m, include)?;
    let man = stage.join("guard.8");
    let mut c = crate::cmd(
        "help2man",
        &[
            "--no-info",
            "--section=8",
            &format!("--version-string={VERSION}"),
            &format!("--include={}", path_str(&h2m)?),
            &format!("--output={}", path_str(&man)?),
            path_str(guard)?,
        ],
    );
    // help2man dates the page from SOURCE_DATE_EPOCH when set.
    c.env("SOURCE_DATE_EPOCH", epoch.to_string());
    run(&mut c)?;
    Ok(fs::read_to_string(&man)?)
}

/// One line of help text as roff inside `.nf`: backslashes and minus signs escaped, and a
/// leading `.` or `'` kept from reading as a request.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// The README shipped in the tarball and in /usr/share/doc/guard: packaging/README.md, then
/// the "Operator guide" section of the repository's README (one text for both).
fn operator_readme() -> Result<String> {
    let head = String::from_utf8(packaging("README.md")?)?;
    let readme = fs::read_to_string(root().join("README.md")).context("read README.md")?;
    let guide = section(&readme, "## Operator guide")
        .context("README.md has no `## Operator guide` section for the operator README")?;
    Ok(format!("{}\n\n{}\n", head.trim_end(), guide.trim_end()))
}

/// The markdown section that starts at the line `heading`, up to the next heading of the same
/// level or the end.
fn section<'a>(text: &'a str, heading: &str) -> Option<&'a str> {
    let start = text.find(&format!("\n{heading}\n")).map(|i| i + 1)?;
    let rest = &text[start + heading.len()..];
    let end = rest
        .find("\n## ")
        .map_or(text.len(), |i| start + heading.len() + i + 1);
    Some(&text[start..end])
}

/// The crates linked into the binary and the eBPF object, with their licenses (from
/// `cargo tree`; compile-time-only proc macros are left out).
fn third_party() -> Result<String> {
    let mut c = crate::cmd(
        "cargo",
        &[
            "tree",
            "-p",
            "guard-userspace",
            "-p",
            "guard-ebpf",
            "--edges",
            "normal,no-proc-macro",
            "--prefix",
            "none",
            "--format",
            "{p}|{l}",
        ],
    );
    c.current_dir(root());
    let tree = capture(&mut c)?;
    let mut crates: Vec<String> = tree
        .lines()
        .map(|l| l.trim_end_matches(" (*)"))
        // Path dependencies are this workspace's own crates.
        .filter(|l| !l.is_empty() && !l.contains("(/"))
        .filter_map(|l| {
            let (package, license) = l.split_once('|')?;
            Some(format!("{package:<32} {license}"))
        })
        .collect();
    crates.sort();
    crates.dedup();
    Ok(format!(
        "The guard binary (and the XDP object inside it) statically links these Rust crates,\n\
         shown with the license each declares on crates.io. Their copyright notices and license\n\
         texts are in each crate's source.\n\n{}\n",
        crates.join("\n")
    ))
}

/// The Depends line: the shared libraries the binary needs (dpkg-shlibdeps, which reads the
/// dynamic section and the installed packages' symbols files), then [`EXTRA_DEPENDS`].
fn depends(stage: &Path, binary: &Path) -> Result<String> {
    // dpkg-shlibdeps wants to run in a source tree: a debian/control is all it reads.
    let src = stage.join("shlibdeps");
    put(
        &src,
        "debian/control",
        b"Source: guard\n\nPackage: guard\nArchitecture: any\n",
        0o644,
    )?;
    let mut c = crate::cmd(
        "dpkg-shlibdeps",
        &["-O", &format!("-e{}", path_str(binary)?)],
    );
    c.current_dir(&src);
    let out = capture(&mut c)?;
    let libs = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("no shlibs:Depends in dpkg-shlibdeps' output:\n{out}"))?;
    fs::remove_dir_all(&src)?;
    Ok(format!("{libs}, {EXTRA_DEPENDS}"))
}

/// The changelog a binary package must carry: one entry for this build.
fn changelog(maintainer: &str, commit: Option<&str>, epoch: u64) -> Result<String> {
    let date = capture(&mut crate::cmd(
        "date",
        &["-u", "-R", "-d", &format!("@{epoch}")],
    ))?;
    Ok(format!(
        "guard ({VERSION}) unstable; urgency=medium\n\n  * Built by cargo xtask dist from commit {}.\n\n -- {maintainer}  {}\n",
        commit.unwrap_or("unknown"),
        date.trim()
    ))
}

/// Installed-Size in KiB as dpkg-gencontrol counts it: each file rounded up, one per directory.
fn installed_size_kib(root: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_dir() {
                *total += 1;
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(root, &mut total)?;
    Ok(total)
}

/// DEBIAN/md5sums, as dh_md5sums writes it (for `dpkg --verify` and debsums): every file but
/// DEBIAN/ and the conffiles, which dpkg tracks on its own.
fn md5sums(root_dir: &Path) -> Result<()> {
    fn walk(root_dir: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let rel = path.strip_prefix(root_dir)?.to_string_lossy().into_owned();
            if rel == "DEBIAN" || rel.starts_with("etc/") {
                continue;
            }
            if path.is_dir() {
                walk(root_dir, &path, out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(root_dir, root_dir, &mut files)?;
    files.sort();
    let mut c = crate::cmd("md5sum", &["--"]);
    c.args(&files).current_dir(root_dir);
    let sums = capture(&mut c)?;
    put(root_dir, "DEBIAN/md5sums", sums.as_bytes(), 0o644)
}

/// `dpkg-deb --build`, every file owned by root whoever builds it.
fn dpkg_deb(root_dir: &Path, deb: &Path, epoch: u64) -> Result<()> {
    let mut c = crate::cmd(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            path_str(root_dir)?,
            path_str(deb)?,
        ],
    );
    // dpkg-deb clamps the archive's timestamps to it.
    c.env("SOURCE_DATE_EPOCH", epoch.to_string());
    run(&mut c)
}

/// `systemd-analyze verify` on the unit as packaged. Its ExecStart and man page must exist, so
/// a copy points at the staged binary and MANPATH at the staged man page; any warning fails.
fn verify_unit(stage: &Path, deb_root: &Path) -> Result<()> {
    let unit = String::from_utf8(packaging("guard.service")?)?;
    let staged_bin = deb_root.join(BIN);
    let copy = stage.join("verify").join("guard.service");
    put(
        &stage.join("verify"),
        "guard.service",
        unit.replace(&format!("/{BIN}"), path_str(&staged_bin)?)
            .as_bytes(),
        0o644,
    )?;
    let mut c = crate::cmd("systemd-analyze", &["verify", path_str(&copy)?]);
    c.env("MANPATH", deb_root.join("usr/share/man"));
    systemd_analyze_verify(&mut c)
}

/// Runs a `systemd-analyze verify` command: it must succeed and say nothing.
fn systemd_analyze_verify(c: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", show(c));
    let out = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("run systemd-analyze")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify on guard.service ({}):\n{said}",
        out.status
    );
    Ok(())
}

/// lintian on the package: errors and warnings fail the build; the rest is shown. What it
/// gets wrong about a Rust binary is overridden, with reasons, in packaging/debian/lintian-overrides.
fn lintian(deb: &Path) -> Result<()> {
    let mut c = crate::cmd("lintian", &["--display-info", path_str(deb)?]);
    eprintln!("xtask: {}", show(&c));
    let out = c.stdout(Stdio::piped()).output().context("run lintian")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        eprintln!("lintian: {line}");
    }
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    ensure!(
        errors.is_empty(),
        "lintian found errors or warnings in {}:\n{}",
        deb.display(),
        errors.join("\n")
    );
    if text.trim().is_empty() {
        eprintln!("xtask: lintian: no findings");
    }
    Ok(())
}

/// The contents of `packaging/<rel>`.
fn packaging(rel: &str) -> Result<Vec<u8>> {
    let path = root().join("packaging").join(rel);
    fs::read(&path).with_context(|| format!("read {}", path.display()))
}

/// Writes `bytes` to `root/rel` with `mode`, creating the directories on the way (0755).
fn put(root: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        mkdirs(parent)?;
    }
    fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// `mkdir -p` with every directory it makes at 0755, whatever the umask.
fn mkdirs(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        mkdirs(parent)?;
    }
    fs::create_dir(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.display()))
}

/// `gzip -9n`: no name or timestamp in the header, so the same input gives the same bytes.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut child = crate::cmd("gzip", &["-9n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run gzip")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    let input = bytes.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("run gzip")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the gzip writer panicked"))??;
    ensure!(out.status.success(), "gzip failed ({})", out.status);
    Ok(out.stdout)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Runs `c` (printed first) and returns its standard output; fails with its standard error.
fn capture(c: &mut Command) -> Result<String> {
    eprintln!("xtask: {}", show(c));
    let out = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("could not start `{}`", show(c)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            show(c),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subcommands_are_read_from_clap_help() {
        let help = "guard: x\n\nUsage: guard <COMMAND>\n\nCommands:\n  run     Run the daemon\n  config  Print the default config\n  help    Print this message\n\nOptions:\n  -h, --help  Print help\n";
        assert_eq!(subcommands(help), ["run", "config"]);
        assert!(subcommands("Usage: guard run [OPTIONS]\n\nOptions:\n  --iface <IF>\n").is_empty());
    }

    #[test]
    fn roff_lines_escape_requests_backslashes_and_minus() {
        assert_eq!(roff_line("  --iface <IF>"), "  \\-\\-iface <IF>");
        assert_eq!(roff_line(".hidden"), "\\&.hidden");
        assert_eq!(roff_line("a\\b"), "a\\eb");
    }

    #[test]
    fn section_ends_at_the_next_heading_of_its_level() {
        let text = "# t\n\n## A\na\n### A.1\nb\n## B\nc\n";
        assert_eq!(section(text, "## A"), Some("## A\na\n### A.1\nb\n"));
        assert_eq!(section(text, "## B"), Some("## B\nc\n"));
        assert_eq!(section(text, "## C"), None);
    }

    #[test]
    fn placeholders_are_found_but_email_addresses_are_not() {
        assert!(has_placeholder("Version: @VERSION@\n"));
        assert!(!has_placeholder("Maintainer: A <a@example.org>\n"));
        assert!(!has_placeholder("a@B b@c"));
    }

    #[test]
    fn the_packaged_unit_starts_after_the_clock_is_set() {
        // Restore turns stored wall-clock expiries into monotonic ones (issue #12, fault 8).
        let unit = String::from_utf8(packaging("guard.service").unwrap()).unwrap();
        assert!(unit.contains("\nAfter=time-sync.target\n"), "{unit}");
        assert!(unit.contains("\nWants=time-sync.target\n"), "{unit}");
    }

    #[test]
    fn the_packaged_unit_runs_the_packaged_paths() {
        let unit = String::from_utf8(packaging("guard.service").unwrap()).unwrap();
        assert!(unit.contains(&format!("ExecStart=/{BIN} run --config /{CONFIG}\n")));
        for script in SCRIPTS {
            let text = String::from_utf8(packaging(&format!("debian/{script}")).unwrap()).unwrap();
            assert!(text.starts_with("#!/bin/sh\n"), "{script}");
        }
    }
}
