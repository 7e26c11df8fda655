//! `pager top`: a live view of the running pager, refreshed every interval from `pager status
//! --json` over its socket (so it needs no more rights than `pager status`).

mod model;
mod view;

use std::path::Path;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::admin::AdminCommand;

/// Reads the pager's status once.
fn read(socket: &Path) -> Result<model::Reading, String> {
    let text =
        crate::admin(socket, &AdminCommand::Status { json: true }).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("the pager's status does not read as JSON ({e}); is it the same version as this `pager`?"))
}

/// Whether `e` asks to quit: q, Esc or Ctrl-C.
fn quits(e: &Event) -> bool {
    match e {
        Event::Key(k) if k.kind == KeyEventKind::Press => {
            matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    }
}

/// Runs the view until the user quits; the first reading must succeed (a pager must answer),
/// later failures are shown and retried.
pub fn run(socket: &Path, interval: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let mut last = read(socket)?;
    let mut taken = Instant::now();
    let mut shown = model::frame(None, &last, 0.0);
    let mut error: Option<String> = None;
    let mut terminal = ratatui::try_init().map_err(|e| {
        format!(
            "cannot take the terminal ({e}); run `pager top` in a terminal, or use `pager status`"
        )
    })?;
    let result = (|| -> std::io::Result<()> {
        terminal.draw(|s| view::draw(s, &shown, None))?;
        let mut next = Instant::now() + interval;
        loop {
            if Instant::now() >= next {
                match read(socket) {
                    Ok(r) => {
                        let now = Instant::now();
                        shown =
                            model::frame(Some(&last), &r, now.duration_since(taken).as_secs_f64());
                        (last, taken, error) = (r, now, None);
                    }
                    Err(e) => error = Some(e),
                }
                terminal.draw(|s| view::draw(s, &shown, error.as_deref()))?;
                next = Instant::now() + interval;
            }
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                match event::read()? {
                    e if quits(&e) => return Ok(()),
                    Event::Resize(..) => {
                        terminal.draw(|s| view::draw(s, &shown, error.as_deref()))?;
                    }
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    Ok(result?)
}
