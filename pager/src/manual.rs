//! What is generated from the command line's definitions: man pages (`pager man DIR`) and
//! shell completions (`pager completions SHELL`), and how the logs adapt to systemd's journal.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `cmd`'s man page and one per subcommand, at every depth (`pager-vol-create.1`),
/// into `dir`; returns the files written.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| cannot_write(dir, e))?;
    let mut written = Vec::new();
    write_page(cmd, "", dir, &mut written)?;
    Ok(written)
}

/// `e` with the path, and what to do.
fn cannot_write(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "cannot write {} ({e}); pass a directory you can write, e.g. `pager man ~/.local/share/man/man1`",
            path.display()
        ),
    )
}

fn write_page(
    cmd: clap::Command,
    parent: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let name = if parent.is_empty() {
        cmd.get_name().to_owned()
    } else {
        format!("{parent}-{}", cmd.get_name())
    };
    // The page is named for the whole command line (`pager-vol-create`), as git's are.
    let cmd = cmd.name(name.clone()).bin_name(name.replace('-', " "));
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    std::fs::write(&path, out).map_err(|e| cannot_write(&path, e))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_page(sub.clone(), &name, dir, written)?;
    }
    Ok(())
}

/// Writes the completion script of `shell` for `cmd` to `out`.
pub fn completions(
    mut cmd: clap::Command,
    shell: clap_complete::Shell,
    out: &mut impl Write,
) -> io::Result<()> {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
    out.flush()
}

/// Whether standard error goes to systemd's journal (systemd sets `JOURNAL_STREAM` to the
/// device and inode of the stream it connected; it must be ours, not inherited by a child).
pub fn under_journald() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}
