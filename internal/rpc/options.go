package rpc

import "maps"

func getOption(h *Handler, _ call, p params) (any, error) {
	v, err := viewOf(h, p)
	if err != nil {
		return nil, err
	}
	out := h.Defaults.optionsShown()
	maps.Copy(out, v.Options)
	return out, nil
}

func changeOption(h *Handler, _ call, p params) (any, error) {
	gid, err := p.str(0)
	if err != nil {
		return nil, err
	}
	opts, err := p.options(1)
	if err != nil {
		return nil, err
	}
	opts, err = normalize(opts)
	if err != nil {
		return nil, err
	}
	delete(opts, "pause")
	delete(opts, "gid")
	err = h.Tasks.ChangeOptions(gid, func(old map[string]string) (map[string]string, error) {
		maps.Copy(old, opts)
		return normalize(old) // together they may be over the bounds
	})
	if err != nil {
		return nil, err
	}
	return "OK", nil
}

func getGlobalOption(h *Handler, _ call, _ params) (any, error) {
	out := h.globalShown()
	maps.Copy(out, h.globalOptions())
	return out, nil
}

// changeGlobalOption keeps, to echo them, the options getGlobalOption reports, checked as a task's; the
// rest are ignored, as aria2c ignores names it does not know, so calls cannot make mflow hold more.
func changeGlobalOption(h *Handler, _ call, p params) (any, error) {
	opts, err := p.options(0)
	if err != nil {
		return nil, err
	}
	shown := h.globalShown()
	opts, err = check(opts, func(name string) (optionRule, bool) {
		if rule, ok := options[name]; ok {
			return rule, true
		}
		_, ok := shown[name]
		return anyString, ok
	})
	if err != nil {
		return nil, err
	}
	h.changeGlobalOptions(opts)
	return "OK", nil
}

// globalOptions returns the options changeGlobalOption set.
func (h *Handler) globalOptions() map[string]string {
	h.globalMu.Lock()
	defer h.globalMu.Unlock()
	return maps.Clone(h.global)
}

// changeGlobalOptions records global options; mflow has no use for them, and keeps them only to echo.
func (h *Handler) changeGlobalOptions(opts map[string]string) {
	h.globalMu.Lock()
	defer h.globalMu.Unlock()
	if h.global == nil {
		h.global = map[string]string{}
	}
	maps.Copy(h.global, opts)
}
