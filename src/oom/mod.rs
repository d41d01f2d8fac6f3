//! Out-of-memory events in logs: parsing every family of message (see DESIGN.md, `diagnose`).
