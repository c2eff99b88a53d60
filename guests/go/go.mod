module l8guest

go 1.24
