//! `fix`: turning a plan into edits of the user's own training code.
