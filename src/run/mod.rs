//! Running a training command under watch (`run`) and finding a batch size by real trials (`fit`).
