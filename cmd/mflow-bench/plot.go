package main

import (
	"fmt"
	"os/exec"
	"strings"
)

// plot draws each drive model's speeds against its ideal, and the first-byte times, with gnuplot.
func plot(path string, results []result, perConn float64) error {
	gnuplot, err := exec.LookPath("gnuplot")
	if err != nil {
		return fmt.Errorf("-plot needs gnuplot (apt-get install gnuplot-nox): %w", err)
	}
	var speeds, firsts strings.Builder
	for i, r := range results {
		if r.hasIdeal() {
			best := "NaN"
			if r.bound > 0 {
				best = fmt.Sprintf("%.3f", r.bound/r.ideal)
			}
			fmt.Fprintf(&speeds, "%d \"%s\" %.3f %.3f %s\n", i, r.name, r.mflow/r.ideal, r.aria/r.ideal, best)
		}
		fmt.Fprintf(&firsts, "%d \"%s\" %.1f %.1f %.1f\n", i, strings.TrimSuffix(r.name, ", no cap"), ms(r.firstDirect), ms(r.firstProxy), ms(r.replay))
	}
	script := fmt.Sprintf(`set terminal pngcairo size 1100,440 font "DejaVu Sans,11"
set output %q
set multiplot layout 1,2 title "mflow -c 4 -s 1M on drive models and real paths (each connection capped at %.0f MB/s), measured side by side in one run"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set xtics rotate by -20 nomirror
set bmargin 5
set ylabel "speed ÷ (4 × one connection)"
set yrange [0:1.2]
plot $speeds using 3:xtic(2) title "mflow" lc rgb "#1f77b4", '' using 4 title "aria2c -x4" lc rgb "#ff7f0e", '' using 5 title "best within -c 4" lc rgb "#bbbbbb", 1 notitle dt 2 lc rgb "#999999"
set ylabel "first byte, ms"
set yrange [0:*]
set offsets 0, 0, graph 0.3, 0
set rmargin 6
set key top left
plot $firsts using 3:xtic(2) title "direct" lc rgb "#2ca02c", '' using 4 title "mflow, first play" lc rgb "#1f77b4", '' using 5 title "mflow, replay" lc rgb "#9ecae1"
unset multiplot
`, path, perConn/1e6)
	input := "$speeds << EOD\n" + speeds.String() + "EOD\n$firsts << EOD\n" + firsts.String() + "EOD\n" + script
	cmd := exec.Command(gnuplot)
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %w: %s", err, out)
	}
	fmt.Println("Drew", path)
	return nil
}
