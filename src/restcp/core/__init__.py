"""Sans-IO logic: pure, synchronous functions and state machines over model values."""
