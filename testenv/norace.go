//go:build !race

package testenv

// RaceEnabled reports a build with the race detector, whose
// instrumentation allocates: allocation ceilings do not hold there.
const RaceEnabled = false
