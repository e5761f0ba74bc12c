//! placeholder (the lead is writing the trainer)
